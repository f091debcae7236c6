"""Adapter-tuning, the paper's lightweight baseline (Lin et al. 2020; Houlsby et al. 2019): a small bottleneck MLP
after every transformer block, trained while the GPT stays frozen (the authors' --tuning_mode adaptertune)."""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from baselines.common import ChangesTheGPT
from model.gpt import GPT, GPTConfig


class Adapter(nn.Module):
    """h + W_up · ReLU(W_down · LN(h)) (Lin et al. 2020); W_up starts at zero, so a new adapter is the identity."""

    def __init__(self, n_embd: int, bottleneck: int):
        super().__init__()
        self.ln = nn.LayerNorm(n_embd)
        self.down = nn.Linear(n_embd, bottleneck)
        self.up = nn.Linear(bottleneck, n_embd)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.down(self.ln(h)).relu())


class AdaptedBlock(nn.Module):
    """A frozen transformer block followed by its adapter."""

    def __init__(self, block: nn.Module, adapter: Adapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, x: Tensor, *args, **kwargs):
        x, kv = self.block(x, *args, **kwargs)
        return self.adapter(x), kv


class Adapters(ChangesTheGPT):
    """One adapter of the given bottleneck width after each of the GPT's blocks (inserted into `gpt` in place)."""

    def __init__(self, gpt: GPT, bottleneck: int):
        super().__init__(gpt)
        self.bottleneck = bottleneck
        self.adapters = nn.ModuleList(Adapter(gpt.config.n_embd, bottleneck) for _ in range(gpt.config.n_layer))
        self.adapters.to(gpt.transformer.wte.weight.device)
        blocks = gpt.transformer.h
        for i, adapter in enumerate(self.adapters):
            blocks[i] = AdaptedBlock(blocks[i], adapter)


def adapter_dim_for_share(config: GPTConfig, share: float, gpt_parameters: int) -> int:
    """The bottleneck whose adapters hold about `share` of the GPT's parameters (the paper's 0.1% and 3%)."""
    C, L = config.n_embd, config.n_layer
    per_unit = L * (2 * C + 1)  # each bottleneck unit: a row of W_down, a column of W_up, a bias
    fixed = L * 3 * C           # the LayerNorm and W_up's bias
    return max(1, round((share * gpt_parameters - fixed) / per_unit))
