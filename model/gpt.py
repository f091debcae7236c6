"""GPT-2 by hand, with one addition prefix-tuning needs: attention over extra keys and values.

In every layer the attention may receive keys and values that come before the sequence's own,
K' = [P_K ; K] and V' = [P_V ; V]. They are either a prefix (trained) or a KV cache (computed); the
model does not care which. Everything else is the GPT-2 of Radford et al. (2019): pre-LayerNorm
blocks, learned positions, GELU (tanh form), and an LM head tied to the token embedding.

The GPT is frozen during prefix-tuning and always runs in eval mode, so it has no dropout. This is the plain
PyTorch model; the scripts make it faster on a CPU with one call, model.cpu_kernels.use_cpu_kernels, which leaves
the math as it is here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from common.errors import UserError
from model.cache import KV, KVCache


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    vocab_size: int = 50257
    block_size: int = 1024        # length of the position table (Hugging Face calls it n_positions)
    n_inner: int | None = None    # MLP width; None means 4 * n_embd
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class CausalSelfAttention(nn.Module):
    attend = staticmethod(F.scaled_dot_product_attention)  # softmax(Q K'ᵀ/√d + mask) V'

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)

    def forward(self, x: Tensor, mask: Tensor | None, past: KV | None = None) -> tuple[Tensor, KV]:
        """x: (B, T, C). past: keys/values before x, each (B or 1, n_head, L, head_dim): a prefix or a cache.

        mask: bool (B or 1, 1, T, L+T), True where a query may look; None means plain causal when there is no
        past, and "every key" for the single query of a decoding step. Returns the output (B, T, C) and (K', V').
        """
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if past is not None:  # in the computed keys' dtype: a float32 prefix must not promote a bfloat16 cache
            past_k, past_v = (t.to(k.dtype).expand(B, -1, -1, -1) for t in past)
            k = torch.cat([past_k, k], dim=2)  # K' = [P_K ; K]  (Li & Liang §4.2)
            v = torch.cat([past_v, v], dim=2)  # V' = [P_V ; V]
        y = self.attend(q, k, v, attn_mask=mask, is_causal=mask is None and past is None)  # softmax(Q K'ᵀ/√d) V'
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        width = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, width)
        self.c_proj = nn.Linear(width, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, mask: Tensor | None, past: KV | None = None) -> tuple[Tensor, KV]:
        """The block's output and its (K', V')."""
        a, kv = self.attn(self.ln_1(x), mask, past)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's initialization; pretrained weights overwrite it, but bench and tests use it as is."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, cache_dir=None) -> GPT:
        """gpt2 | gpt2-medium | gpt2-large | gpt2-xl from the Hugging Face hub, or a local checkpoint directory."""
        from model.loading import load_pretrained
        return load_pretrained(cls, name_or_dir, cache_dir)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, prefix: Sequence[KV] | None = None,
                attention_mask: Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> tuple[Tensor | None, Tensor | None]:
        """Return (logits, loss).

        idx: (B, T) token ids. targets: (B, T) next-token ids, -100 where no loss is taken.
        prefix: n_layer pairs (P_K, P_V), each (B or 1, n_head, P, head_dim); batch 1 broadcasts. Real tokens
            continue at position P; KVCache.start(..., positions_from_zero=True) as `cache` numbers them from 0.
        attention_mask: (B, T), 1 for real tokens and 0 for padding (left or right).
        cache: a KVCache to read and extend (it already holds any prefix); used for decoding.
        last_only: logits for the last position only (decoding).

        Without targets: logits (B, T, vocab) and no loss. With targets: no logits, and the loss.
        """
        if cache is None:
            if prefix is not None:
                self._check_prefix(prefix, idx.size(0))
            cache = KVCache.start(idx.size(0), prefix, device=idx.device)
        elif prefix is not None:
            raise ValueError("give the prefix to KVCache.start, not alongside a cache")
        h = self._hidden_states(self.transformer.wte(idx), cache, attention_mask)  # h_i = LM_φ(z_i, h_<i)  (eq. 1)
        if targets is None:  # the logits W_φ h_i of p_φ(z_{i+1} | h_≤i) = softmax(W_φ h_i)  (§3.1)
            return self.lm_head(h[:, -1:] if last_only else h), None
        return None, self.loss(h, targets)

    def loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """−(1/N) Σ_i log p_φ(t_i | h_≤i) over the N positions with a target (t_i ≠ -100), where
        p_φ(z_{i+1} | h_≤i) = softmax(W_φ h_i)  (§3.1), W_φ the LM head: the mean per-token term of eq. (2).

        h (..., C): final hidden states; targets (...). The softmax runs in at least float32, since bfloat16 logits
        lose the loss's digits.
        """
        logits = self.lm_head(h).flatten(0, -2)  # W_φ h_i
        return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets.flatten())

    def keys_values(self, idx: Tensor | None = None, embeddings: Tensor | None = None) -> list[KV]:
        """The (K, V) every layer computes for a sequence (token ids or input embeddings), from position 0.

        Passed as `prefix=`, they reproduce exactly what prepending that sequence would do.
        """
        x = self.transformer.wte(idx) if embeddings is None else embeddings
        cache = KVCache.start(x.size(0), device=x.device)
        self._hidden_states(x, cache, attention_mask=None)
        return cache.layers

    def _hidden_states(self, x: Tensor, cache: KVCache, attention_mask: Tensor | None) -> Tensor:
        """h_i = LM_φ(z_i, h_<i) (eq. 1): token embeddings (B, T, C) in, final hidden states (B, T, C) out;
        reads and extends `cache` with every position's keys and values."""
        B, T, _ = x.shape
        L = cache.length
        real = None if attention_mask is None else attention_mask.bool()
        positions = self._positions(cache.next_position, L, T, real)
        key_mask = cache.key_mask
        if real is not None or key_mask is not None:
            past = key_mask if key_mask is not None else x.new_ones(B, L, dtype=torch.bool)
            key_mask = torch.cat([past, real if real is not None else x.new_ones(B, T, dtype=torch.bool)], 1)
        mask = attention_mask_for(T, L, key_mask, x.device)

        x = x + self.transformer.wpe(positions)
        presents = []
        for i, block in enumerate(self.transformer.h):
            x, kv = block(x, mask, cache.layers[i] if cache.layers else None)
            presents.append(kv)
        cache.layers, cache.key_mask = presents, key_mask
        cache.next_position = cache.next_position + (T if real is None else real.sum(1))
        return self.transformer.ln_f(x)

    def _positions(self, first: Tensor, L: int, T: int, real: Tensor | None) -> Tensor:
        """Position ids (B, T) of T new tokens after L keys: each row continues from `first`; padding does not
        advance the count."""
        if real is None:
            positions = first[:, None] + torch.arange(T, device=first.device)
        else:  # pads get a harmless in-range position; their outputs are never used
            positions = (first[:, None] + real.long().cumsum(1) - 1).clamp(min=0)
        # positions never outrun the keys (L + T at most), so only a long cache costs the device a sync here
        if positions.numel() and L + T > self.config.block_size and int(positions.max()) >= self.config.block_size:
            raise UserError(f"the prefix and sequence need position {int(positions.max())}, but the model's "
                            f"position table ends at {self.config.block_size - 1}; use shorter inputs or a "
                            f"shorter prefix")
        return positions

    def _check_prefix(self, prefix: Sequence[KV], batch_size: int) -> None:
        c = self.config
        if len(prefix) != c.n_layer:
            raise ValueError(f"prefix has {len(prefix)} layers, the model {c.n_layer}")
        for k, v in prefix:
            if k.shape != v.shape or k.dim() != 4 or k.shape[1] != c.n_head or k.shape[3] != c.head_dim \
                    or k.shape[0] not in (1, batch_size):
                raise ValueError(f"each prefix K and V must be (1 or {batch_size}, {c.n_head}, P, {c.head_dim}); "
                                 f"got {tuple(k.shape)} and {tuple(v.shape)}")


def attention_mask_for(T: int, L: int, key_mask: Tensor | None, device) -> Tensor | None:
    """Which of the L + T keys each of the T new queries may attend to: (B or 1, 1, T, L + T), or None.

    Query i sits at key index L + i and sees every key up to itself: the causal mask aligned to the lower right. (SDPA's is_causal=True aligns it to the
    upper left when L > 0, which would hide the prefix from the first tokens.) Padding keys are hidden, but
    a query always sees itself, so that padding rows stay finite.
    """
    if key_mask is None and (L == 0 or T == 1):
        return None
    itself = L + torch.arange(T, device=device)[:, None]  # each query's own key index
    keys = torch.arange(L + T, device=device)
    allowed = keys <= itself
    if key_mask is not None:
        allowed = (allowed & key_mask[:, None, :]) | (keys == itself)
    return allowed.view(-1, 1, T, L + T)  # 4-D: a 3-D mask sends SDPA on CPU to its slow math path
