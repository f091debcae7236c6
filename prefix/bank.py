"""Per-row prefixes: a bank of trained prefixes, one chosen for each row of a batch.

The paper notes (§8) that prefix-tuning allows mixed-task batching: rows of one batch can carry different
tasks' prefixes through one frozen GPT. Each row gives exactly what it gives alone with its own prefix.
"""
import torch
import torch.nn as nn
from torch import Tensor

from model.cache import KV
from prefix.tuning import PrefixTuning


class PrefixBank(nn.Module):
    def __init__(self, prefixes: list[PrefixTuning]):
        super().__init__()
        first = prefixes[0]
        if any((p.config, p.prefix_len, p.positions_from_zero, p.placement) !=
               (first.config, first.prefix_len, first.positions_from_zero, first.placement) for p in prefixes):
            raise ValueError("a bank's prefixes must share the model, length, placement and position convention")
        self.prefixes = nn.ModuleList(prefixes)
        self.prefix_len, self.positions_from_zero = first.prefix_len, first.positions_from_zero

    def forward(self, which: Tensor) -> list[KV]:
        """Per-layer (K, V) of shape (len(which), n_head, P, head_dim): row b gets prefix which[b]."""
        each = [p(1) for p in self.prefixes]  # each prefix computed once, however many rows use it
        return [(torch.cat([kv[l][0] for kv in each])[which], torch.cat([kv[l][1] for kv in each])[which])
                for l in range(len(each[0]))]
