"""The GPT's Linear layer: nn.Linear, with its float32 CPU matmuls on oneDNN.

PyTorch multiplies float32 matrices on CPU with MKL, and MKL takes a slower code path on non-Intel CPUs:
on the AMD EPYC this project is built on it reaches ~200 GFLOP/s where oneDNN, which ships inside PyTorch
too, reaches ~450; on the few rows of a decoding step MKL is 1.7x slower. The math is the same
(y = x·Wᵀ + b in float32); only the kernel differs. Anything else (other dtypes, autocast, GPUs, CPUs other
than x86-64, where this was not measured, a torch built without oneDNN, torch.backends.mkldnn.enabled = False)
takes nn.Linear's path.
"""
import platform

import torch
import torch.nn as nn
from torch import Tensor

_ONEDNN = (platform.machine().lower() in ("x86_64", "amd64") and torch.backends.mkldnn.is_available()
           and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_matmul_t(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a·bᵀ (+ bias) in float32 on oneDNN; a (..., n) and b (m, n) may be strided views."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class _OneDnnLinear(torch.autograd.Function):
    """y = x·Wᵀ + b and its gradients: dx = dy·W, dW = dyᵀ·x, db = Σ dy. The frozen GPT needs only dx."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x if weight.requires_grad else None, weight)
        return onednn_matmul_t(x, weight, bias)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        dx = onednn_matmul_t(dy, weight.t()) if ctx.needs_input_grad[0] else None
        rows = dy.reshape(-1, dy.size(-1))
        dw = onednn_matmul_t(rows.t(), x.reshape(-1, x.size(-1)).t()) if ctx.needs_input_grad[1] else None
        db = rows.sum(0) if ctx.needs_input_grad[2] else None
        return dx, dw, db


def takes_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether x·Wᵀ runs on oneDNN here: float32 on CPU, outside autocast, oneDNN built in and enabled."""
    return (_ONEDNN and torch.backends.mkldnn.enabled and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        if takes_onednn(x, self.weight):
            return _OneDnnLinear.apply(x, self.weight, self.bias)
        return super().forward(x)
