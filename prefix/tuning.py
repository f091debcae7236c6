"""Prefix-tuning (Li & Liang, 2021): a trainable prefix P steers a frozen GPT-2.

Equations of the paper (its ACL numbers; the softmax and the MLP are cited by section) and where they live:
  (1)   h_i = LM_φ(z_i, h_<i)                    GPT._hidden_states (model/gpt.py): the frozen GPT-2
  §3.1  p_φ(z_{i+1} | h_≤i) = softmax(W_φ h_i)   GPT.forward's logits, GPT.loss (model/gpt.py)
  (2)   max_θ  Σ_{i∈Y_idx} log p(z_i | h_<i)     PrefixTuning.loss (the GPT's cross-entropy over the text)
  (3)   h_i = P_θ[i,:] for i ∈ P_idx             prefix_keys_values: P as every layer's keys and values
  §4.3  P_θ[i,:] = MLP_θ(P'_θ[i,:])              PrefixTuning.activations
and in model/gpt.py, CausalSelfAttention: K' = [P_K ; K], V' = [P_V ; V].

In a transformer, what a prefix position contributes to later tokens is its key and value in every layer,
so P is stored directly as those: one row per prefix position, n_layer · 2 · n_embd numbers wide
(the layout of the paper's code and of HF PEFT).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from model.cache import KV, KVCache
from model.gpt import GPT, GPTConfig


class PrefixTuning(nn.Module):
    """The trainable prefix: P = MLP(P') (§4.3), or P itself when reparam=False.

    P' is a small (prefix_len × n_embd) table; the MLP is Linear(n_embd, mid_dim) → tanh →
    Linear(mid_dim, n_layer·2·n_embd) (the paper uses mid_dim k = 512 for table-to-text, 800 for
    summarization). Call it with a batch size to get the per-layer (K, V) that GPT(prefix=...) takes.
    After training, `export()` computes P once and drops the MLP.
    """
    placement = "prefix"  # where the trained positions sit: [PREFIX ; x ; y]

    def __init__(self, config: GPTConfig, prefix_len: int, mid_dim: int = 512, reparam: bool = True,
                 dropout: float = 0.0, positions_from_zero: bool = False):
        super().__init__()
        if prefix_len <= 0:
            raise ValueError(f"prefix_len must be positive, got {prefix_len}")
        self.config, self.prefix_len, self.positions_from_zero = config, prefix_len, positions_from_zero
        width = config.n_layer * 2 * config.n_embd
        # P' (reparameterized) or P (direct); N(0, 1) like the paper's code and PEFT (an nn.Embedding's init)
        self.table = nn.Parameter(torch.randn(prefix_len, config.n_embd if reparam else width))
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, mid_dim), nn.Tanh(), nn.Linear(mid_dim, width)) \
            if reparam else None
        self.dropout = nn.Dropout(dropout)

    def activations(self) -> Tensor:
        """P: (prefix_len, n_layer·2·n_embd)."""
        if self.mlp is None:
            return self.table
        return self.mlp(self.table)  # P_θ[i,:] = MLP_θ(P'_θ[i,:])  (§4.3)

    def forward(self, batch_size: int = 1) -> list[KV]:
        """Per-layer (K, V), each (batch_size, n_head, prefix_len, head_dim); dropout draws per row."""
        P = self.activations().unsqueeze(0).expand(batch_size, -1, -1)
        return prefix_keys_values(self.dropout(P), self.config)

    def loss(self, gpt: GPT, idx: Tensor, targets: Tensor, kv: list[KV] | None = None) -> Tensor:
        """Eq. (2) with the GPT frozen: the mean -log p(text | table, prefix) over the targets.

        kv: this module's output when it was called through a wrapper (DDP); computed here otherwise.
        """
        kv = self(idx.size(0)) if kv is None else kv
        return gpt(idx, targets, cache=self.cache(idx.size(0), kv))[1]

    def start_decoding(self, gpt: GPT, prompt: Tensor, attention_mask: Tensor | None):
        """A KV cache holding this prefix, and the prompt still to be read: (cache, prompt, attention_mask)."""
        return self.cache(prompt.size(0), self(1)), prompt, attention_mask

    def cache(self, batch_size: int, kv: list[KV]) -> KVCache:
        """A KV cache seeded with kv, this prefix's output: the real tokens after it take positions P.. or, with
        positions_from_zero, 0.."""
        return KVCache.start(batch_size, kv, self.positions_from_zero)

    def export(self) -> PrefixTuning:
        """The inference form: P computed once, no MLP, no gradients (prefix_len · n_layer · 2 · n_embd numbers)."""
        return self._export_as(PrefixTuning)

    def stored_parameters(self) -> int:
        """Numbers the export keeps: P, prefix_len · n_layer · 2 · n_embd."""
        return self.prefix_len * self.config.n_layer * 2 * self.config.n_embd

    def report(self, gpt_parameters: int) -> str:
        """Trainable numbers while training, numbers stored after export, and the stored share of the GPT."""
        c = self.config
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        stored = self.stored_parameters()
        return (f"prefix: {trainable:,} trainable parameters while training (P' and the MLP); "
                f"{stored:,} stored after export ({self.prefix_len} × {c.n_layer} layers × 2 × {c.n_embd}), "
                f"{100 * stored / gpt_parameters:.3f}% of the GPT's {gpt_parameters:,}")

    def _export_as(self, cls: type[PrefixTuning]) -> PrefixTuning:
        return cls.holding(self.config, self.activations().detach(), self.positions_from_zero)

    @classmethod
    def holding(cls, config: GPTConfig, P: Tensor, positions_from_zero: bool = False) -> PrefixTuning:
        """The inference form around a computed P (prefix_len, n_layer·2·n_embd): no MLP, frozen."""
        prefix = cls(config, P.size(0), reparam=False, positions_from_zero=positions_from_zero)
        with torch.no_grad():
            prefix.table.copy_(P)
        return prefix.requires_grad_(False).eval()


def prefix_keys_values(P: Tensor, config: GPTConfig) -> list[KV]:
    """Eq. (3) in key/value form: rows of P (B, prefix_len, n_layer·2·n_embd) become every layer's (P_K, P_V).

    Each row holds, for layer l, a key at slot 2l and a value at slot 2l+1, each n_embd = n_head · head_dim wide.
    """
    B, length, _ = P.shape
    slots = P.view(B, length, 2 * config.n_layer, config.n_head, config.head_dim).permute(2, 0, 3, 1, 4)
    return [(slots[2 * l], slots[2 * l + 1]) for l in range(config.n_layer)]


def prefix_rows(kv: list[KV]) -> Tensor:
    """The inverse of prefix_keys_values for one prefix: per-layer (1, n_head, P, head_dim) pairs → P rows."""
    slots = torch.stack([t[0] for pair in kv for t in pair])  # (2·n_layer, n_head, P, head_dim)
    return slots.permute(2, 0, 1, 3).reshape(slots.size(2), -1)


def freeze(gpt: GPT) -> GPT:
    """The GPT is never trained: no gradients, and eval mode so nothing inside it is random."""
    return gpt.requires_grad_(False).eval()
