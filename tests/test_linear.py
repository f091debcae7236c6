"""model/linear.py: the oneDNN float32 path computes nn.Linear's values and gradients; everything else falls back."""
import pytest
import torch
import torch.nn.functional as F

from model.linear import Linear
from tests.conftest import needs_onednn


def layer(bias: bool, frozen: bool = False) -> Linear:
    torch.manual_seed(0)
    lin = Linear(24, 40, bias=bias)
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
    assert type(y.grad_fn).__name__ == "_OneDnnLinearBackward"  # the oneDNN path was taken
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


@pytest.mark.parametrize("case", ["float64", "autocast", "oneDNN disabled"])
def test_other_cases_take_nn_linears_path(case, monkeypatch):
    lin = layer(bias=True)
    x = torch.randn(3, 24)
    if case == "float64":
        lin, x = lin.double(), x.double()
    if case == "oneDNN disabled":
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        y, expected = lin(x), F.linear(x, lin.weight, lin.bias)
    assert y.dtype == (torch.bfloat16 if case == "autocast" else x.dtype)
    assert type(y.grad_fn).__name__ != "_OneDnnLinearBackward"
    torch.testing.assert_close(y, expected, atol=0, rtol=0)
