"""The KV cache: keys and values the model has already computed, per layer.

A prefix is a KV cache too: P virtual tokens whose keys and values were trained instead of computed.
So decoding with a prefix starts from a cache that holds the prefix, and every new token attends to it
exactly as it did in training.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

KV = tuple[Tensor, Tensor]  # (K, V), each (B or 1, n_head, length, head_dim)


class KVCache:
    """What the model has seen so far: per-layer (K, V), which keys are real, and each row's next position."""

    def __init__(self, layers: list[KV], key_mask: Tensor | None, next_position: Tensor):
        self.layers = layers                # one (K, V) per layer; [] before anything was seen
        self.key_mask = key_mask            # (B, length) bool, False at padding; None when every key is real
        self.next_position = next_position  # (B,) position id of each row's next real token

    @classmethod
    def start(cls, batch_size: int, prefix: Sequence[KV] | None = None, positions_from_zero: bool = False,
              device=None) -> KVCache:
        """An empty cache, or one seeded with a prefix.

        By default the prefix occupies positions 0..P-1 and real tokens continue at P (the paper's code and
        PEFT do this); `positions_from_zero` numbers the real tokens from 0 instead.
        """
        if prefix is None:
            return cls([], None, torch.zeros(batch_size, dtype=torch.long, device=device))
        first_position = 0 if positions_from_zero else prefix[0][0].size(2)
        return cls(list(prefix), None,
                   torch.full((batch_size,), first_position, dtype=torch.long, device=prefix[0][0].device))

    @property
    def length(self) -> int:
        return self.layers[0][0].size(2) if self.layers else 0

    def reorder(self, rows: Tensor) -> None:
        """Keep the given rows, in that order, repeats allowed (beam search copies and reshuffles its beams).

        A layer of batch size 1 is shared by every row (a broadcast prefix) and stays as it is.
        """
        pick = lambda t: t if t.size(0) == 1 else t.index_select(0, rows)
        self.layers = [(pick(k), pick(v)) for k, v in self.layers]
        if self.key_mask is not None:
            self.key_mask = self.key_mask.index_select(0, rows)
        self.next_position = self.next_position.index_select(0, rows)
