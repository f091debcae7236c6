"""What every baseline shares: it trains weights inside the GPT, so the GPT attends to no prefix."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from model.cache import KVCache
from model.gpt import GPT


class ChangesTheGPT(nn.Module):
    """The interface train.py and sample.py use for every method, here without a prefix.

    Its parameters are the trained ones (inside the GPT or added to it); its state_dict is what a checkpoint and
    an export hold. `gpt` is kept outside the module tree, so a baseline saves only what it trains.
    """
    placement = None             # no trained positions in the sequence
    positions_from_zero = False  # real tokens start at position 0, as in plain GPT-2

    def __init__(self, gpt: GPT):
        super().__init__()
        self.frozen_gpt = [gpt]  # in a list: not a submodule

    def forward(self, batch_size: int = 1) -> None:
        """The prefix the GPT attends to: none (the training loop calls every method through here, for DDP)."""
        return None

    def loss(self, gpt: GPT, idx: Tensor, targets: Tensor, kv=None) -> Tensor:
        """Eq. (2) over the weights this method trains: the mean -log p(text | table)."""
        return gpt(idx, targets)[1]

    def start_decoding(self, gpt: GPT, prompt: Tensor, attention_mask: Tensor | None):
        """An empty KV cache and the whole prompt to read: (cache, prompt, attention_mask)."""
        return KVCache.start(prompt.size(0), device=prompt.device), prompt, attention_mask

    def export(self) -> ChangesTheGPT:
        """The decoding form: this module, frozen (what it trained is already in place in the GPT)."""
        return self.requires_grad_(False).eval()

    def report(self, gpt_parameters: int) -> str:
        """Trainable numbers while training, numbers the export stores, and their share of the GPT."""
        trainable = trainable_parameters(self)
        stored = self.stored_parameters()
        return (f"{self.title()}: {trainable:,} trainable parameters ({100 * trainable / gpt_parameters:.3f}% "
                f"of the GPT's {gpt_parameters:,}); {stored:,} stored after export ({100 * stored / gpt_parameters:.3f}%)")

    def title(self) -> str:
        return type(self).__name__

    def stored_parameters(self) -> int:
        """Numbers the export keeps for this task."""
        unique = {t.data_ptr(): t.numel() for t in self.state_dict().values()}  # a tied weight counts once
        return sum(unique.values())


def trainable_parameters(module: nn.Module) -> int:
    """Numbers that receive gradients, each shared parameter counted once."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters() if p.requires_grad}.values())
