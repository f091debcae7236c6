"""prefix/attention.py: attention probabilities recomputed beside SDPA, and the figure of where they go."""
import re

import pytest
import torch

import train
from conftest import assert_drawn_png, run_main
from hub_checkpoint import random_hf_gpt2, write_checkpoint
from model import GPT
from prefix import InfixTuning, PrefixTuning, freeze
from prefix import attention
from prefix.attention import SEGMENTS, attention_probabilities, key_order, recorded_attention, segment_shares, \
    text_attention

V = 101


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    hf = random_hf_gpt2(n_layer=3, n_head=3, n_embd=24, vocab_size=V, n_positions=64, seed=2)
    with torch.no_grad():  # peaked attention, not nearly uniform
        for block in hf.transformer.h:
            block.attn.c_attn.weight.mul_(10)
    ours = freeze(GPT.from_pretrained(str(write_checkpoint(hf, tmp_path_factory.mktemp("ckpt")))))
    hf.set_attn_implementation("eager")  # the implementation that returns its probabilities
    return hf, ours


@pytest.fixture(scope="module")
def gpt(hf_and_ours):
    return hf_and_ours[1]


def calls_with_outputs(gpt, run):
    """Each attention call's recorded probabilities beside what the model's SDPA path returned: (y, (K', V'))."""
    outputs = [[] for _ in gpt.transformer.h]
    hooks = [block.attn.register_forward_hook(lambda m, a, out, layer=layer: layer.append(out))
             for block, layer in zip(gpt.transformer.h, outputs)]
    try:
        with recorded_attention(gpt) as calls, torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return [(block.attn, p, out) for block, layer_calls, layer_outputs in zip(gpt.transformer.h, calls, outputs)
            for p, out in zip(layer_calls, layer_outputs, strict=True)]


def scenarios(gpt):
    """Every way the model calls its attention: training with a prefix (and targets, so the top block asks fewer
    queries), left-padded rows, a decoding step of one token, no prefix at all, and an infix."""
    torch.manual_seed(0)
    prefix = PrefixTuning(gpt.config, 4).requires_grad_(False)
    idx = torch.randint(0, V - 1, (3, 9))
    targets = torch.where(torch.arange(9) >= 5, idx.roll(-1, 1), -100)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0

    def decoding_step():
        cache, rest, m = prefix.start_decoding(gpt, idx, mask)
        gpt(rest, attention_mask=m, cache=cache, last_only=True)
        gpt(idx[:, :1], cache=cache)

    def infix():
        cache, rest, _ = InfixTuning(gpt.config, 3).start_decoding(gpt, idx[:1], None)
        gpt(torch.cat([rest, idx[:1, :4]], 1), cache=cache)

    return {"prefix": lambda: gpt(idx, prefix=prefix(3)),
            "prefix and targets": lambda: gpt(idx, targets, prefix=prefix(3)),
            "padded rows": lambda: gpt(idx, prefix=prefix(3), attention_mask=mask),
            "decoding step": decoding_step, "no prefix": lambda: gpt(idx), "infix": infix}


@pytest.mark.parametrize("scenario", ["prefix", "prefix and targets", "padded rows", "decoding step", "no prefix",
                                      "infix"])
def test_probabilities_times_values_give_the_models_attention_output(gpt, scenario):
    calls = calls_with_outputs(gpt, scenarios(gpt)[scenario])
    assert len(calls) >= gpt.config.n_layer
    for attn, probabilities, (y, (keys, values)) in calls:
        B, queries, C = y.shape
        assert probabilities.shape == (B, gpt.config.n_head, queries, keys.size(2))
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(probabilities.shape[:-1]))
        recomputed = attn.c_proj((probabilities @ values).transpose(1, 2).reshape(B, queries, C))
        torch.testing.assert_close(recomputed, y, atol=1e-5, rtol=1e-5)


def test_the_probabilities_match_transformers_with_a_prefix_of_real_tokens(hf_and_ours):
    """A prefix equal to real tokens z's keys and values attends as [z ; x] does in transformers' GPT-2, whose
    eager attention returns its probabilities: the same numbers, z's columns being the prefix's."""
    hf, gpt = hf_and_ours
    z, x = torch.randint(0, V - 1, (1, 4)), torch.randint(0, V - 1, (1, 7))
    with torch.no_grad():
        prefix = gpt.keys_values(z)
        with recorded_attention(gpt) as calls:
            gpt(x, prefix=prefix)
        expected = hf(torch.cat([z, x], 1), output_attentions=True).attentions
    for (ours,), theirs in zip(calls, expected, strict=True):
        torch.testing.assert_close(ours, theirs[:, :, 4:], atol=1e-5, rtol=1e-4)


def test_the_model_default_mask_is_causal_from_the_lower_right():
    keys = torch.randn(1, 1, 6, 4)
    x = torch.randn(1, 3, 12)

    class Attention(torch.nn.Module):  # q = x's first 4 channels
        def c_attn(self, x):
            return torch.cat([x[..., :4]] * 3, -1)

    probabilities = attention_probabilities(Attention(), x[..., :4], None, keys, queries=2)
    visible = probabilities[0, 0] > 0
    assert visible.tolist() == [[True] * 5 + [False], [True] * 6]  # queries at key 4 and 5 of L = 3 + T = 3


@pytest.mark.parametrize("cls", [PrefixTuning, InfixTuning])
def test_the_keys_named_prefix_are_the_trained_ones_and_the_shares_add_up(gpt, cls):
    torch.manual_seed(1)
    method = cls(gpt.config, 3).requires_grad_(False)
    prompt, text = torch.randint(0, V - 1, (6,)).tolist() + [V - 1], torch.randint(0, V - 1, (5,)).tolist()
    keys_seen = []
    hook = gpt.transformer.h[1].attn.register_forward_hook(lambda m, a, out: keys_seen.append(out[1][0]))
    try:
        probabilities = text_attention(gpt, method, prompt, text)
    finally:
        hook.remove()
    order = key_order(cls.placement, 3, prompt, text)
    segments = [segment for segment, _ in order]
    assert probabilities.shape == (gpt.config.n_layer, gpt.config.n_head, len(text) + 1, len(order))
    prefix_keys = keys_seen[-1][0, :, [i for i, s in enumerate(segments) if s == "prefix"]]
    torch.testing.assert_close(prefix_keys, method(1)[1][0][0])
    assert [token for _, token in order if token is not None] == prompt + text
    # the separator's query (the first) sees no text yet; the last one sees every key
    assert probabilities[:, :, 0, [i for i, s in enumerate(segments) if s == "text"]].sum() == 0
    assert (probabilities[:, :, -1] > 0).all()
    shares = segment_shares(probabilities, segments)
    torch.testing.assert_close(shares.sum(-1), torch.ones(shares.shape[:2]))
    table = [i for i, s in enumerate(segments) if s == "table"]
    torch.testing.assert_close(shares[..., SEGMENTS.index("table")], probabilities[..., table].sum(-1).mean(-1))


def test_the_command_draws_a_run_of_the_tiny_model(trained_run, tmp_path):
    result = run_main(attention.main, "--out_dir", trained_run, "--start", "name : Aromi | Type : pub",
                        "--max_new_tokens", "8", "--output", tmp_path / "attention.png")
    assert result.returncode == 0, result.stderr
    assert_drawn_png(tmp_path / "attention.png")
    layers = re.findall(r"layer (\d+): prefix (\d+)%, table (\d+)%, text so far (\d+)%", result.stdout)
    assert [int(layer) for layer, *_ in layers] == [0, 1]
    assert all(abs(sum(map(int, shares)) - 100) <= 2 for _, *shares in layers)


def test_a_run_without_a_prefix_is_one_sentence(tiny_gpt2, e2e_dir, tmp_path):
    result = run_main(train.main, "--init_from", tiny_gpt2, "--data_dir", e2e_dir, "--out_dir",
                        tmp_path, "--tuning_mode", "lora", "--max_iters", "2", "--eval_interval", "2",
                        "--eval_iters", "1", "--batch_size", "2")
    assert result.returncode == 0, result.stderr
    result = run_main(attention.main, "--out_dir", tmp_path, "--start", "name : Aromi")
    assert result.returncode == 2 and "has no prefix" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "attention.png").exists()
