"""The hand-written GPT-2: prefix K/V, positions, padding, KV cache, loss."""
import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from model import GPT, GPTConfig, KVCache
from model.gpt import attention_mask_for

torch.manual_seed(0)


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=3, n_embd=24, vocab_size=97, block_size=48)).eval()
    with torch.no_grad():  # LayerNorms away from 1/0, biases nonzero: nothing may hide behind an identity
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.3)
    return model


def tokens(*shape):
    return torch.randint(0, 97, shape)


@torch.no_grad()
def test_prefix_of_real_tokens_reproduces_prepending_them(gpt):
    idx = tokens(4, 14)
    full, _ = gpt(idx)
    prefix = gpt.keys_values(idx[:, :6])  # per-row prefixes: each row's own first 6 tokens
    rest, _ = gpt(idx[:, 6:], prefix=prefix)
    torch.testing.assert_close(rest, full[:, 6:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_batch_one_prefix_broadcasts_over_the_batch(gpt):
    shared, idx = tokens(1, 5), tokens(3, 9)
    rest, _ = gpt(idx, prefix=gpt.keys_values(shared))
    full, _ = gpt(torch.cat([shared.expand(3, -1), idx], 1))
    torch.testing.assert_close(rest, full[:, 5:], atol=1e-5, rtol=0)


@torch.no_grad()
def test_positions_from_zero_numbers_real_tokens_from_zero(gpt):
    idx, prefix = tokens(2, 7), gpt.keys_values(tokens(2, 4))
    shifted, _ = gpt(idx, prefix=prefix)
    from_zero, _ = gpt(idx, cache=KVCache.start(2, prefix, positions_from_zero=True))
    assert not torch.allclose(shifted, from_zero)
    # By hand: the same attention with position embeddings 0..6 instead of 4..10.
    wpe = gpt.transformer.wpe.weight
    with torch.no_grad():
        saved = wpe.clone()
        wpe[4:11] = saved[0:7]
        by_hand, _ = gpt(idx, prefix=prefix)
        wpe.copy_(saved)
    torch.testing.assert_close(from_zero, by_hand, atol=1e-6, rtol=0)


def test_prefix_and_sequence_beyond_the_position_table_is_a_clear_error(gpt):
    prefix = gpt.keys_values(tokens(1, 40))
    gpt(tokens(1, 8), prefix=prefix)  # 40 + 8 = 48 positions: fits exactly
    with pytest.raises(UserError, match="position table"):
        gpt(tokens(1, 9), prefix=prefix)
    gpt(tokens(1, 9), cache=KVCache.start(1, prefix, positions_from_zero=True))  # from zero it fits


def test_prefix_is_keyword_only(gpt):
    prefix = gpt.keys_values(tokens(1, 3))
    with pytest.raises(TypeError):
        gpt(tokens(1, 4), None, prefix)


def test_malformed_prefix_is_refused(gpt):
    prefix = gpt.keys_values(tokens(2, 3))
    with pytest.raises(ValueError, match="layers"):
        gpt(tokens(2, 4), prefix=prefix[:-1])
    with pytest.raises(ValueError, match="must be"):
        gpt(tokens(3, 4), prefix=prefix)  # batch 2 prefix for a batch of 3


@torch.no_grad()
def test_cached_decoding_step_by_step_equals_one_forward(gpt):
    idx = tokens(2, 12)
    for prefix in (None, gpt.keys_values(tokens(2, 5))):
        full, _ = gpt(idx, prefix=prefix)
        cache = KVCache.start(2, prefix)
        steps = [gpt(idx[:, :4], cache=cache)[0]] + [gpt(idx[:, t:t + 1], cache=cache)[0] for t in range(4, 12)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        assert cache.length == 12 + (0 if prefix is None else 5)


@torch.no_grad()
@pytest.mark.parametrize("with_prefix", [False, True])
def test_padded_batches_give_each_rows_unpadded_result(gpt, with_prefix):
    lengths = [9, 4, 6]
    rows = [tokens(1, n) for n in lengths]
    prefix = gpt.keys_values(tokens(1, 3)) if with_prefix else None
    alone = [gpt(r, prefix=prefix)[0][0] for r in rows]
    T, pad = max(lengths), 0
    for side in ("left", "right"):
        idx = torch.full((3, T), pad)
        mask = torch.zeros(3, T, dtype=torch.long)
        for i, (r, n) in enumerate(zip(rows, lengths)):
            span = slice(T - n, T) if side == "left" else slice(0, n)
            idx[i, span], mask[i, span] = r[0], 1
        batched, _ = gpt(idx, prefix=prefix, attention_mask=mask)
        for i, n in enumerate(lengths):
            span = slice(T - n, T) if side == "left" else slice(0, n)
            torch.testing.assert_close(batched[i, span], alone[i], atol=1e-5, rtol=0)
        assert torch.isfinite(batched).all()  # fully padded query rows still see themselves


@torch.no_grad()
def test_left_padded_prompt_then_cached_steps_match_each_row_alone(gpt):
    prompts = [tokens(1, 7), tokens(1, 3)]
    prefix = gpt.keys_values(tokens(1, 2))
    idx = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, 7 - p.size(1):], mask[i, 7 - p.size(1):] = p[0], 1
    cache = KVCache.start(2, prefix)
    gpt(idx, attention_mask=mask, cache=cache)
    nxt = tokens(2, 1)
    step, _ = gpt(nxt, cache=cache)
    for i, p in enumerate(prompts):
        alone, _ = gpt(torch.cat([p, nxt[i:i + 1]], 1), prefix=prefix)
        torch.testing.assert_close(step[i, -1], alone[0, -1], atol=1e-5, rtol=0)


def test_mask_is_causal_from_the_lower_right():
    """With L earlier keys, query i sees keys 0..L+i: the alignment SDPA's is_causal=True gets wrong."""
    mask = attention_mask_for(T=3, L=2, key_mask=None, device="cpu")[0, 0]
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    top_left = torch.ones(3, 5, dtype=torch.bool).tril()
    assert not torch.equal(mask, top_left)


def test_loss_is_the_mean_over_positions_with_a_target(gpt):
    idx = tokens(2, 10)
    targets = tokens(2, 10)
    targets[:, :4] = -100
    targets[1, 8:] = -100
    logits, _ = gpt(idx)
    none, loss = gpt(idx, targets=targets)
    assert none is None
    expected = F.cross_entropy(logits.view(-1, 97), targets.view(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected)


def test_frozen_gpts_loss_and_prefix_gradient_match_the_full_logits(gpt, monkeypatch):
    """The training path: the LM head only at the positions with a target, the loss sliced over the vocabulary.
    With a prefix and right padding, it must equal cross-entropy over logits of every position."""
    from model import cpu_kernels
    monkeypatch.setattr(cpu_kernels, "VOCAB_SLICE", 32)  # 97 = 3 slices of 32 and one of 1
    frozen = GPT(gpt.config).eval().requires_grad_(False)
    frozen.load_state_dict(gpt.state_dict())
    cpu_kernels.use_cpu_kernels(frozen)
    idx, targets = tokens(3, 12), tokens(3, 12)
    targets[:, :5] = -100                       # the first target is at position 5 in every row
    targets[0, 5:7] = -100
    attention_mask = torch.ones(3, 12, dtype=torch.long)
    attention_mask[2, 9:] = 0                   # row 2 is right-padded, and its padding has no target
    targets[2, 9:] = -100
    prefix = [(k.clone().requires_grad_(), v.clone().requires_grad_()) for k, v in gpt.keys_values(tokens(1, 4))]

    _, loss = frozen(idx, targets, prefix=prefix, attention_mask=attention_mask)
    grads = torch.autograd.grad(loss, [t for kv in prefix for t in kv])
    logits, _ = frozen(idx, prefix=prefix, attention_mask=attention_mask)
    expected = F.cross_entropy(logits.view(-1, 97), targets.view(-1), ignore_index=-100)
    expected_grads = torch.autograd.grad(expected, [t for kv in prefix for t in kv])
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_targets_none_gives_logits_everywhere_and_last_only_the_last(gpt, with_prefix):
    idx = tokens(2, 6)
    prefix = gpt.keys_values(tokens(1, 3)) if with_prefix else None
    attention_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 left-padded
    logits, loss = gpt(idx, prefix=prefix, attention_mask=attention_mask)
    assert loss is None and logits.shape == (2, 6, 97)
    last, _ = gpt(idx, prefix=prefix, attention_mask=attention_mask, last_only=True)
    torch.testing.assert_close(last, logits[:, -1:], atol=1e-6, rtol=1e-6)


def test_lm_head_is_tied_to_the_token_embedding(gpt):
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
