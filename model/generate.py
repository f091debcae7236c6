"""Decoding with a KV cache: greedy, temperature / top-k / top-p sampling, and beam search.

The prefix (if any) seeds the cache, so every generated token attends to it exactly as in training.
Prompts of different lengths are left-padded and described by an attention mask.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from model.cache import KV, KVCache


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Prompts of different lengths as one batch: (idx, attention_mask), padded on the left so that every
    row's next token is generated at the same column."""
    width = max(map(len, prompts))
    idx = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return idx.to(device), mask.to(device)


@torch.no_grad()
def generate(model, idx: Tensor, max_new_tokens: int, *, prefix: Sequence[KV] | None = None,
             cache: KVCache | None = None, attention_mask: Tensor | None = None, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None, min_length: int = 0,
             banned_ids: Sequence[int] = (), generator: torch.Generator | None = None) -> Tensor:
    """Continue each row of idx (B, T) by up to max_new_tokens; temperature 0 means greedy.

    The prefix seeds the KV cache; or pass a `cache` that already holds whatever comes before idx.
    Returns the new tokens (B, n). A row that produced eos_id is filled with eos_id afterwards, and decoding
    stops once every row has. eos is banned while a row's prompt (without padding) and text are shorter than
    min_length tokens.
    """
    B = idx.size(0)
    if cache is None:
        cache = KVCache.start(B, prefix, device=idx.device)
    logits, _ = model(idx, attention_mask=attention_mask, cache=cache, last_only=True)
    finished = torch.zeros(B, dtype=torch.bool, device=idx.device)
    banned = torch.tensor(banned_ids, dtype=torch.long, device=idx.device)
    lengths = prompt_lengths(idx, attention_mask)
    out = []
    for step in range(max_new_tokens):
        scores = logits[:, -1].float()
        scores[:, banned] = float("-inf")
        if eos_id is not None:
            scores[:, eos_id] = scores[:, eos_id].masked_fill(lengths + step < min_length, float("-inf"))
        token = next_token(scores, temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        out.append(token)
        if eos_id is not None and finished.all():
            break
        logits, _ = model(token[:, None], cache=cache)
    return torch.stack(out, 1) if out else idx.new_zeros(B, 0)


def next_token(scores: Tensor, temperature: float, top_k: int | None, top_p: float | None,
               generator: torch.Generator | None = None) -> Tensor:
    """One token per row from (B, vocab) scores: argmax at temperature 0, else a sample."""
    if temperature == 0:
        return scores.argmax(-1)
    scores = scores / temperature
    if top_k is not None:  # keep the k most likely tokens
        kth = scores.topk(min(top_k, scores.size(-1)), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None:  # keep the smallest set whose probability reaches top_p (the nucleus)
        sorted_scores, order = scores.sort(-1, descending=True)
        probs = sorted_scores.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p  # the better tokens already hold top_p
        drop = outside.scatter(-1, order, outside)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def beam_search(model, idx: Tensor, max_new_tokens: int, num_beams: int, *, eos_id: int,
                prefix: Sequence[KV] | None = None, cache: KVCache | None = None, attention_mask: Tensor | None = None,
                length_penalty: float = 1.0, min_length: int = 0, banned_ids: Sequence[int] = ()) -> list[list[int]]:
    """The best continuation of each row of idx (B, T), without its eos, by beam search with the rules of
    transformers 3.2's BeamHypotheses, which the paper's code decodes with.

    A hypothesis's length is its row's prompt (the real tokens of idx, padding excluded; not what the cache
    holds before them, such as a prefix) plus the tokens generated before its eos: what the authors' code
    counts, decoding one table at a time. A finished hypothesis scores sum(log p) / length ** length_penalty,
    its eos's log p included. An eos finishes a hypothesis only when it ranks among the num_beams best
    candidates of the step. Each step keeps the num_beams best live beams of every row; a row is done once it
    holds num_beams finished hypotheses, none worse than the step's best candidate divided by the current
    length ** length_penalty. Rows cut off by max_new_tokens rank their live beams with the finished ones.
    eos is banned while a row's prompt and text are shorter than min_length tokens.
    """
    B, V = idx.size(0), model.config.vocab_size
    if max_new_tokens == 0:
        return [[] for _ in range(B)]
    if cache is None:
        cache = KVCache.start(B, prefix, device=idx.device)
    rows = torch.arange(B, device=idx.device).repeat_interleave(num_beams)  # row b's beams sit together
    cache.reorder(rows)
    mask = None if attention_mask is None else attention_mask[rows]
    logits, _ = model(idx[rows], attention_mask=mask, cache=cache, last_only=True)
    lengths = prompt_lengths(idx, attention_mask)
    beam_prompt_len, prompt_len = lengths[rows], lengths.tolist()

    beam_scores = torch.zeros(B, num_beams, device=idx.device)
    beam_scores[:, 1:] = float("-inf")  # all beams start equal: expand only the first
    beam_tokens: list[list[int]] = [[] for _ in range(B * num_beams)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # (score, tokens) in the order found
    done = [False] * B
    banned = torch.tensor(banned_ids, dtype=torch.long, device=idx.device)
    for step in range(max_new_tokens):  # step: the tokens each beam holds so far
        logp = F.log_softmax(logits[:, -1].float(), dim=-1)
        logp[:, banned] = float("-inf")
        logp[:, eos_id] = logp[:, eos_id].masked_fill(beam_prompt_len + step < min_length, float("-inf"))
        candidates = (beam_scores.view(-1, 1) + logp).view(B, num_beams * V)
        top_scores, top_ids = candidates.topk(2 * num_beams, dim=1)  # 2x, so eos candidates can't starve the beams
        top_scores, top_ids = top_scores.tolist(), top_ids.tolist()

        next_rows, next_tokens, next_scores = [], [], []
        for b in range(B):
            kept = []
            for rank, (score, flat) in enumerate(zip(top_scores[b], top_ids[b])):
                row, token = b * num_beams + flat // V, flat % V
                if done[b] or len(kept) == num_beams:
                    break
                if token != eos_id:
                    kept.append((row, token, score))
                elif rank < num_beams:
                    _add(finished[b], score / (prompt_len[b] + step) ** length_penalty, beam_tokens[row], num_beams)
            while len(kept) < num_beams:  # a done row (or one out of candidates) carries inert beams
                kept.append((b * num_beams, eos_id, float("-inf")))
            for row, token, score in kept:
                next_rows.append(row), next_tokens.append(token), next_scores.append(score)
            done[b] = done[b] or (len(finished[b]) == num_beams and min(s for s, _ in finished[b])
                                  >= top_scores[b][0] / (prompt_len[b] + step) ** length_penalty)
        beam_tokens = [beam_tokens[r] + [t] for r, t in zip(next_rows, next_tokens)]
        beam_scores = torch.tensor(next_scores, device=idx.device).view(B, num_beams)
        if all(done) or step + 1 == max_new_tokens:
            break
        cache.reorder(torch.tensor(next_rows, device=idx.device))
        logits, _ = model(torch.tensor(next_tokens, device=idx.device)[:, None], cache=cache)

    for b in range(B):  # rows cut off by max_new_tokens: their live beams compete as they are
        if not done[b]:
            for j in range(num_beams):
                score, tokens = beam_scores[b, j].item(), beam_tokens[b * num_beams + j]
                if score > float("-inf"):
                    _add(finished[b], score / (prompt_len[b] + len(tokens)) ** length_penalty, tokens, num_beams)
    # the best; among equal scores the one found last, as transformers 3.2 picks it
    return [max(reversed(hyps), key=lambda h: h[0])[1] if hyps else [] for hyps in finished]


def prompt_lengths(idx: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B,) each row's real prompt tokens: the row's length without its padding."""
    if attention_mask is None:
        return torch.full((idx.size(0),), idx.size(1), dtype=torch.long, device=idx.device)
    return attention_mask.sum(1)


def _add(hyps: list[tuple[float, list[int]]], score: float, tokens: list[int], capacity: int) -> None:
    """Keep a finished hypothesis if there is room or it beats the worst kept; past capacity the worst goes
    (of equal worst ones, the one found first)."""
    if len(hyps) < capacity or score > min(s for s, _ in hyps):
        hyps.append((score, list(tokens)))
    if len(hyps) > capacity:
        del hyps[min(range(len(hyps)), key=lambda i: hyps[i][0])]
