"""LoRA (Hu et al. 2021): a trainable low-rank update of the attention's q, k, v projection, W + (α/r)·B·A, with
the GPT frozen. It stores about as few numbers as a prefix and can be merged into W for free decoding."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from baselines.common import ChangesTheGPT
from model.gpt import GPT


class LoRALinear(nn.Module):
    """y = W·x + b + (α/r)·B·(A·x): A (r × in) random, B (out × r) zero, so training starts from the frozen W."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initializes a weight (and PEFT does)
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale  # h = W x + (α/r) B A x  (Hu et al. eq. 3)

    def merged(self) -> nn.Linear:
        """One Linear with W + (α/r)·B·A: the same outputs, no extra cost at decoding time."""
        merged = type(self.base)(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(self.base.weight + self.scale * self.B @ self.A)
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged.to(self.base.weight.device).requires_grad_(False)


class LoRA(ChangesTheGPT):
    """A rank-r update of every block's attention input projection c_attn (q, k and v), inserted in place."""

    def __init__(self, gpt: GPT, rank: int, alpha: float):
        super().__init__(gpt)
        self.rank, self.alpha = rank, alpha
        self.A, self.B = nn.ParameterList(), nn.ParameterList()  # what trains and is saved: A and B, per layer
        for block in gpt.transformer.h:
            attention = _attention(block)
            attention.c_attn = LoRALinear(attention.c_attn, rank, alpha)
            self.A.append(attention.c_attn.A)
            self.B.append(attention.c_attn.B)

    def merge(self) -> None:
        """Fold every B·A into its W in place: the GPT is then a plain GPT with the task's weights."""
        for block in self.frozen_gpt[0].transformer.h:
            attention = _attention(block)
            attention.c_attn = attention.c_attn.merged()


def _attention(block: nn.Module) -> nn.Module:
    return block.block.attn if hasattr(block, "block") else block.attn  # a block may carry an adapter
