"""The paper's ablations (§7): embedding-only prefixes, infix placement, initialization from real words."""
from __future__ import annotations

import torch
from torch import Tensor

from common.errors import UserError
from model.cache import KV, KVCache
from model.gpt import GPT
from prefix.tuning import PrefixTuning, prefix_rows


class EmbeddingOnly(PrefixTuning):
    """Trainable virtual-token embeddings at the input layer only (§7.2, "embedding-only").

    The frozen GPT computes their activations in every layer, exactly as for real tokens at positions
    0..prefix_len-1, so only prefix_len × n_embd numbers are free: far less expressive than a full prefix.
    """

    def __init__(self, gpt: GPT, prefix_len: int, dropout: float = 0.0, positions_from_zero: bool = False):
        super().__init__(gpt.config, prefix_len, reparam=False, dropout=dropout,
                         positions_from_zero=positions_from_zero)
        self.table = torch.nn.Parameter(torch.randn(prefix_len, gpt.config.n_embd) * 0.02)  # like GPT-2's wte
        self.frozen_gpt = [gpt]  # in a list: the GPT is neither a submodule nor saved with the prefix

    def activations(self) -> Tensor:
        """P: what the frozen GPT computes for the virtual embeddings, as keys and values of every layer."""
        return prefix_rows(self.frozen_gpt[0].keys_values(embeddings=self.table.unsqueeze(0)))


class InfixTuning(PrefixTuning):
    """[x ; INFIX ; y]: the trained positions sit between the table and the text (§7.3, "prefix vs infix").

    x is the table ` {table} `; y starts with the separator <|endoftext|>, which reads x and the infix and
    predicts the first text token. The infix occupies positions |x|..|x|+P-1; y continues after it.
    """
    placement = "infix"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.positions_from_zero:
            raise UserError("--positions_from_zero numbers the tokens after a prefix from 0; an infix follows the "
                            "table (an infix continues the table's positions)")

    def loss(self, gpt: GPT, idx: Tensor, targets: Tensor, kv: list[KV] | None = None) -> Tensor:
        """Eq. (2) with the infix between table and text: the mean -log p(text | table, infix)."""
        kv = self(idx.size(0)) if kv is None else kv
        sep = (targets != -100).int().argmax(1)  # each row's separator: where its targets begin
        X, Y = int(sep.max()), int((idx.size(1) - sep).max())
        tables = _shift_rows_left(idx, sep - X, X, fill=0)  # right-aligned, i.e. left-padded
        table_mask = (torch.arange(X, device=idx.device) >= X - sep[:, None]).long()
        cache = self._cache_after(gpt, tables, table_mask, kv)
        texts, text_targets = _shift_rows_left(idx, sep, Y, fill=0), _shift_rows_left(targets, sep, Y, fill=-100)
        return gpt(texts, text_targets, cache=cache)[1]

    def start_decoding(self, gpt: GPT, prompt: Tensor, attention_mask: Tensor | None):
        """Prompts ` {table} <|endoftext|>`, left-padded: read the tables, add the infix, go on from the separator."""
        mask = None if attention_mask is None else attention_mask[:, :-1]
        return self._cache_after(gpt, prompt[:, :-1], mask, self(prompt.size(0))), prompt[:, -1:], None

    def export(self) -> InfixTuning:
        return self._export_as(InfixTuning)

    def _cache_after(self, gpt: GPT, tables: Tensor, attention_mask: Tensor | None, kv: list[KV]) -> KVCache:
        """A cache holding the (left-padded) tables, as the frozen GPT reads them, followed by the infix."""
        B, P = tables.size(0), self.prefix_len
        cache = KVCache.start(B, device=tables.device)
        with torch.no_grad():  # the tables' keys and values do not depend on the infix
            gpt(tables, attention_mask=attention_mask, cache=cache, last_only=True)  # for the cache only
        cache.layers = [(torch.cat([k, ik], 2), torch.cat([v, iv], 2)) for (k, v), (ik, iv) in zip(cache.layers, kv)]
        if cache.key_mask is not None:
            cache.key_mask = torch.cat([cache.key_mask, cache.key_mask.new_ones(B, P)], 1)
        cache.next_position = cache.next_position + P
        return cache


def _shift_rows_left(t: Tensor, by: Tensor, width: int, fill: int) -> Tensor:
    """out[b, j] = t[b, by[b] + j] for j < width, `fill` where that falls outside t (negative by shifts right)."""
    cols = by[:, None] + torch.arange(width, device=t.device)
    inside = (cols >= 0) & (cols < t.size(1))
    return torch.where(inside, t.gather(1, cols.clamp(0, t.size(1) - 1)), torch.full_like(cols, fill))


def init_text_ids(text: str, tokenizer) -> list[int]:
    """The tokens of an initialization text, read as the authors read it: as a word inside a text, after a space."""
    return tokenizer.encode_ordinary(text if text.startswith(" ") else " " + text)


def init_from_text(prefix: PrefixTuning, gpt: GPT, token_ids: list[int], fit_steps: int = 300, lr: float = 1e-3):
    """Start the prefix at the activations of real words, e.g. "table-to-text:" (§7.4, "initialization").

    Embedding-only: copy the words' embeddings. Without the MLP: copy the K/V the frozen GPT computes for them.
    With the MLP: fit MLP(P') to those K/V by mean squared error first, as the paper's code does.
    Returns the final mean squared error (0 when copied).
    """
    if len(token_ids) != prefix.prefix_len:
        raise UserError(f"the initialization text is {len(token_ids)} tokens long but prefix_len is "
                        f"{prefix.prefix_len}; use --prefix_len {len(token_ids)}")
    ids = torch.tensor([token_ids], device=prefix.table.device)
    with torch.no_grad():
        if isinstance(prefix, EmbeddingOnly):
            prefix.table.copy_(gpt.transformer.wte(ids)[0])
            return 0.0
        target = prefix_rows(gpt.keys_values(ids))
        if prefix.mlp is None:
            prefix.table.copy_(target)
            return 0.0
    optimizer = torch.optim.Adam(prefix.parameters(), lr=lr)
    for _ in range(fit_steps):
        loss = torch.nn.functional.mse_loss(prefix.activations(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return torch.nn.functional.mse_loss(prefix.activations(), target).item()


VARIANTS = ("prefix", "embedding-only", "infix")


def build_prefix(variant: str, gpt: GPT, prefix_len: int, mid_dim: int = 512, reparam: bool = True,
                 dropout: float = 0.0, positions_from_zero: bool = False) -> PrefixTuning:
    """The trainable module for a variant: the paper's prefix, or one of its ablations."""
    if variant == "embedding-only":
        return EmbeddingOnly(gpt, prefix_len, dropout, positions_from_zero)
    cls = {"prefix": PrefixTuning, "infix": InfixTuning}[variant]
    return cls(gpt.config, prefix_len, mid_dim, reparam, dropout, positions_from_zero)
