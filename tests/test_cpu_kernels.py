"""model/cpu_kernels.py: the oneDNN float32 path computes nn.Linear's values and gradients, everything else falls back,
and a private op that fails its import-time check leaves the model on PyTorch's ordinary path with the same results."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, cpu_kernels
from model.cpu_kernels import OneDnnLinear, probe
from prefix import PrefixTuning, freeze
from tests.conftest import ROOT, needs_onednn


def layer(bias: bool, frozen: bool = False) -> OneDnnLinear:
    torch.manual_seed(0)
    lin = OneDnnLinear(24, 40, bias=bias)
    with torch.no_grad():
        if bias:
            lin.bias.normal_()
    return lin.requires_grad_(not frozen)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (1, 1, 24)])
def test_values_and_gradients_match_float64(bias, shape):
    lin = layer(bias)
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(*shape[:-1], 40)
    y = lin(x)
    assert type(y.grad_fn).__name__ == "OneDnnLinearFunctionBackward"  # the oneDNN path was taken
    y.backward(dy)

    x64 = x.detach().double().requires_grad_()
    w64 = lin.weight.detach().double().requires_grad_()
    b64 = lin.bias.detach().double().requires_grad_() if bias else None
    y64 = F.linear(x64, w64, b64)
    y64.backward(dy.double())
    torch.testing.assert_close(y, y64.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x64.grad.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lin.weight.grad, w64.grad.float(), atol=1e-5, rtol=1e-5)
    if bias:
        torch.testing.assert_close(lin.bias.grad, b64.grad.float(), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_strided_input_is_read_correctly():
    lin = layer(bias=True)
    x = torch.randn(24, 6).t()  # a transposed view
    torch.testing.assert_close(lin(x), F.linear(x.contiguous(), lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_frozen_layer_keeps_no_input_for_backward_and_gives_no_weight_gradient():
    lin = layer(bias=True, frozen=True)
    x = torch.randn(4, 24, requires_grad=True)
    y = lin(x)
    saved_input, _ = y.grad_fn.saved_tensors
    assert saved_input is None  # the frozen GPT's activations are not held for a weight gradient
    y.sum().backward()
    assert lin.weight.grad is None and lin.bias.grad is None
    torch.testing.assert_close(x.grad, lin.weight.sum(0).expand(4, -1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["float64", "autocast", "oneDNN disabled", "op failed its check"])
def test_other_cases_take_nn_linears_path(case, monkeypatch):
    lin = layer(bias=True)
    x = torch.randn(3, 24)
    if case == "float64":
        lin, x = lin.double(), x.double()
    if case == "oneDNN disabled":
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    if case == "op failed its check":
        monkeypatch.setattr(cpu_kernels, "ONEDNN_WORKS", False)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        y, expected = lin(x), F.linear(x, lin.weight, lin.bias)
    assert y.dtype == (torch.bfloat16 if case == "autocast" else x.dtype)
    assert type(y.grad_fn).__name__ != "OneDnnLinearFunctionBackward"
    torch.testing.assert_close(y, expected, atol=0, rtol=0)


# ---- attention under bfloat16 autocast ----------------------------------------------------------------------------

@pytest.mark.parametrize("mask", [False, True], ids=["causal", "boolean mask"])
def test_bfloat16_attention_on_cpu_is_float32_attention_rounded_once(mask):
    """Under CPU autocast, bfloat16 q, k, v are attended in float32 and only the output is rounded to bfloat16; the
    gradients reach q, k and v in bfloat16. Outside autocast SDPA runs as called."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 16).bfloat16().requires_grad_() for _ in range(3))
    attn_mask = torch.ones(9, 9, dtype=torch.bool).tril() if mask else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_kernels.attention(q, k, v, attn_mask, is_causal=not mask)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=not mask)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected.bfloat16(), atol=0, rtol=0)
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 for t in (q, k, v))
    outside = cpu_kernels.attention(q, k, v, attn_mask, is_causal=not mask)
    torch.testing.assert_close(outside, F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                                       is_causal=not mask), atol=0, rtol=0)


# ---- the import-time check ----------------------------------------------------------------------------------------

def plain(a, b, bias=None):
    return F.linear(a, b, bias)


def raises(a, b, bias=None):
    raise TypeError("_linear_pointwise() takes 5 arguments (6 given)")  # what a changed signature would do


def ignores_strides(a, b, bias=None):
    """Reads each operand's memory as if it were laid out row by row: right for contiguous tensors only."""
    as_laid_out = lambda t: torch.as_strided(t, t.shape, torch.empty(t.shape).stride(), t.storage_offset())
    return plain(as_laid_out(a), as_laid_out(b), bias)


@pytest.mark.parametrize("kernel, accepted", [
    (plain, True),
    (raises, False),
    (lambda a, b, bias=None: plain(a, b, bias) * (1 + 1e-3), False),       # wrong values
    (lambda a, b, bias=None: plain(a, b, None), False),                      # drops the bias
    (ignores_strides, False),
    (lambda a, b, bias=None: plain(a.double(), b.double(), None if bias is None else bias.double()), False),  # dtype
    (lambda a, b, bias=None: plain(a, b, bias).flatten(), False),            # shape
], ids=["plain formula", "raises", "wrong values", "drops the bias", "ignores strides", "float64", "flat"])
def test_the_probe_accepts_the_formula_and_refuses_anything_else(kernel, accepted):
    assert probe(kernel) is accepted


@needs_onednn
def test_the_private_op_passes_the_probe_here():
    assert probe() and cpu_kernels.ONEDNN_WORKS


def logits_loss_and_gradient() -> dict[str, torch.Tensor]:
    """A small frozen GPT with a trainable prefix (its MLP's Linears included) in float32: logits, loss, dL/dP'."""
    torch.manual_seed(0)
    gpt = freeze(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1500, block_size=32)))
    prefix = PrefixTuning(gpt.config, 3, mid_dim=16)
    cpu_kernels.use_cpu_kernels(gpt, prefix)
    idx, targets = torch.randint(0, 1500, (2, 9)), torch.randint(0, 1500, (2, 9))
    targets[:, :4] = -100
    with torch.no_grad():
        logits, _ = gpt(idx, prefix=prefix(2))
    loss = prefix.loss(gpt, idx, targets)
    loss.backward()
    return dict(logits=logits, loss=loss.detach(), gradient=prefix.table.grad)


BROKEN_OP = """
import sys, torch
real = torch.ops.mkldnn._linear_pointwise
def raises(*args):
    raise TypeError("_linear_pointwise() takes 5 arguments (6 given)")
def wrong(*args):
    return real(*args) * 1.01
torch.ops.mkldnn._linear_pointwise = raises if sys.argv[1] == "raises" else wrong
from model import cpu_kernels
from tests.test_cpu_kernels import logits_loss_and_gradient
torch.save(dict(works=cpu_kernels.ONEDNN_WORKS, **logits_loss_and_gradient()), sys.argv[2])
"""


@needs_onednn
@pytest.mark.parametrize("broken", ["raises", "wrong"])
def test_a_broken_private_op_falls_back_at_import_to_the_same_logits_loss_and_gradient(broken, tmp_path):
    """The op replaced before the model is imported, as a future torch might change it: the import warns, the model
    takes PyTorch's ordinary path, and its results equal the fast path's here."""
    done = subprocess.run([sys.executable, "-c", BROKEN_OP, broken, str(tmp_path / "out.pt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "oneDNN's private linear op failed its check" in done.stderr
    fallback = torch.load(tmp_path / "out.pt")
    assert fallback.pop("works") is False
    fast = logits_loss_and_gradient()
    for name, want in fast.items():
        torch.testing.assert_close(fallback[name], want, atol=1e-5, rtol=1e-5, msg=name)


# ---- putting the fast path into a model ---------------------------------------------------------------------------

def test_use_cpu_kernels_swaps_in_place_and_keeps_the_plain_results():
    """The plain GPT and prefix use nn.Linear; after the call every Linear is a OneDnnLinear (where the op works),
    each attention and the GPT's loss take the fast rules, the LM head stays tied, and the numbers stay the same."""
    torch.manual_seed(0)
    gpt = freeze(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=1500, block_size=32)))
    prefix = PrefixTuning(gpt.config, 3, mid_dim=16)
    assert not any(isinstance(m, OneDnnLinear) for m in [*gpt.modules(), *prefix.modules()])
    idx, targets = torch.randint(0, 1500, (2, 9)), torch.randint(0, 1500, (2, 9))
    targets[:, :4] = -100
    plain = prefix.loss(gpt, idx, targets)
    parameters = [id(p) for p in [*gpt.parameters(), *prefix.parameters()]]
    cpu_kernels.use_cpu_kernels(gpt, prefix)
    linears = [m for m in [*gpt.modules(), *prefix.modules()] if isinstance(m, torch.nn.Linear)]
    assert all(type(m) is OneDnnLinear for m in linears) == cpu_kernels.ONEDNN_WORKS
    assert all(block.attn.attend is cpu_kernels.attention for block in gpt.transformer.h)
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    assert [id(p) for p in [*gpt.parameters(), *prefix.parameters()]] == parameters
    fast = prefix.loss(gpt, idx, targets)
    if cpu_kernels.ONEDNN_WORKS:
        assert type(fast.grad_fn).__name__ == "SlicedCrossEntropyBackward"
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
