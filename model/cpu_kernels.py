"""The CPU fast path: the GPT's matmuls on oneDNN, and the LM-head loss a slice of the vocabulary at a time.

    use_cpu_kernels(gpt, method)   # in the scripts, once the modules are built

puts it into built modules in place; the math stays that of model/gpt.py, and each piece takes the plain path
wherever it does not apply (an accelerator, float64, ...), so calling it is never wrong.

PyTorch multiplies float32 matrices on CPU with MKL, and MKL takes a slower code path on non-Intel CPUs: on the
AMD EPYC this project was built on it reaches ~200 GFLOP/s where oneDNN, which ships inside PyTorch too, reaches
~450, and it is 1.7x slower on the few rows of a decoding step. oneDNN's matmul is reached only through a private
op, `torch.ops.mkldnn._linear_pointwise`, so at import this module runs it once on a small case against the plain
formula; on any exception or mismatch (a future torch may change the op) everything takes PyTorch's ordinary path,
slower but never wrong. The math is the same either way: only the kernel differs.

  OneDnnLinear             nn.Linear whose float32 CPU forward and backward run on oneDNN (dx = dy·W, dW = dyᵀ·x,
                           db = Σ dy, written by hand); everything else takes nn.Linear's path.
  sliced_cross_entropy     §3.1 and eq. (2), −log softmax(W h_i)[t_i] averaged, with no (N, vocab) logits: each
                           (N, 1024) slice stays in cache while its logsumexp is taken, and the backward pass rebuilds
                           the softmax from it (and the LM head's gradient when the head trains). On oneDNN in float32,
                           or in bfloat16 under CPU autocast (AMX units on recent Intel CPUs; the softmax stays
                           float32), as autocast would multiply F.linear's.
  attention                SDPA, in float32 under CPU bfloat16 autocast, where ATen's bfloat16 kernel is ~3x slower.
  gpt_loss                 GPT.loss on a CPU: the LM head at the positions with a target alone, sliced where it can.

`python -m prefix.gradcheck` checks both hand-written backwards against float64 autograd (docs/gradients.md, §7).
"""
import platform
import types
import warnings
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from model.gpt import GPT, CausalSelfAttention

VOCAB_SLICE = 1024  # vocabulary rows per matmul: (N, 1024) float32 logits stay in cache for N in the hundreds

MatmulT = Callable[[Tensor, Tensor], Tensor]  # (a, b) -> a·bᵀ in float32


def onednn_matmul_t(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a·bᵀ (+ bias) in float32 on oneDNN; a (..., n) and b (m, n) may be strided views."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def probe(matmul_t=onednn_matmul_t) -> bool:
    """Whether matmul_t computes a·bᵀ + bias here, on the operands the model gives it: a batched input with a bias,
    and the transposed views of the backward passes. Any exception, wrong shape or dtype, or a value off by more than
    float32 rounding, is a no."""
    g = torch.Generator().manual_seed(0)
    x, w, bias, dy = (torch.randn(*shape, generator=g) for shape in ((2, 3, 24), (40, 24), (40,), (2, 3, 40)))
    x64, w64, dy64 = x.double(), w.double(), dy.double()
    cases = [(x, w, bias, x64 @ w64.t() + bias.double()),           # y = x·Wᵀ + b, x batched
             (dy, w.t(), None, dy64 @ w64),                           # dx = dy·W: b a transposed view
             (dy.view(6, 40).t(), x.view(6, 24).t(), None,            # dW = dyᵀ·x: both transposed views
              dy64.view(6, 40).t() @ x64.view(6, 24))]
    try:
        with torch.no_grad():
            for a, b, c, want in cases:
                got = matmul_t(a, b, c)
                if got.shape != want.shape or got.dtype != torch.float32 or \
                        not torch.allclose(got.double(), want, rtol=1e-4, atol=1e-4):
                    return False
    except Exception:  # noqa: BLE001: whatever the private op does wrong, the answer is the ordinary path
        return False
    return True


def _onednn_works() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return False  # not measured off x86-64; no oneDNN in this torch
    if probe():
        return True
    warnings.warn(f"torch {torch.__version__}: oneDNN's private linear op failed its check at import; float32 "
                  f"matmuls on CPU take PyTorch's ordinary path (correct, possibly slower)")
    return False


ONEDNN_WORKS = _onednn_works()


def takes_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether x·Wᵀ runs on oneDNN here: float32 on CPU, outside autocast, the op checked and oneDNN enabled."""
    return (ONEDNN_WORKS and torch.backends.mkldnn.enabled and x.device.type == "cpu"
            and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"))


# ---- the Linear layer --------------------------------------------------------------------------------------------

class OneDnnLinearFunction(torch.autograd.Function):
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


class OneDnnLinear(nn.Linear):
    """nn.Linear, with its float32 CPU matmuls on oneDNN where the op passed its check."""

    def forward(self, x: Tensor) -> Tensor:
        if takes_onednn(x, self.weight):
            return OneDnnLinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)


# ---- attention ---------------------------------------------------------------------------------------------------

def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
    """softmax(Q·K'ᵀ/√d + mask)·V' by F.scaled_dot_product_attention; under bfloat16 autocast on a CPU, in float32
    and returned in bfloat16, since ATen's CPU kernel for bfloat16 is ~3x slower, forward and backward, at GPT-2's
    head sizes on the Intel machine it was measured on."""
    if q.device.type != "cpu" or q.dtype != torch.bfloat16 or not torch.is_autocast_enabled("cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    with torch.autocast("cpu", enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask, is_causal=is_causal)
    return y.to(q.dtype)


# ---- the LM-head loss ----------------------------------------------------------------------------------------------

def gpt_loss(gpt: GPT, h: Tensor, targets: Tensor) -> Tensor:
    """GPT.loss on a CPU: the LM head on the positions that have a target alone (the table half of a training row
    never needs logits), sliced where sliced_loss_applies. On an accelerator the plain GPT.loss runs: selecting those
    rows would make the host wait to learn how many there are."""
    if h.device.type == "cpu":
        supervised = targets != -100
        h, targets = h[supervised], targets[supervised]
        if sliced_loss_applies(h, gpt.lm_head.weight):
            return sliced_cross_entropy(h, gpt.lm_head.weight, targets)
    return GPT.loss(gpt, h, targets)


class SliceKernel(NamedTuple):
    """How the sliced loss multiplies: operands are cast once, and a·bᵀ of cast operands comes back in float32."""
    cast: Callable[[Tensor], Tensor]
    matmul_t: MatmulT


FLOAT32_ONEDNN = SliceKernel(lambda t: t, onednn_matmul_t)
# as autocast would multiply F.linear's: bfloat16 operands (AMX units on recent Intel CPUs), the softmax in float32
BFLOAT16 = SliceKernel(Tensor.bfloat16, lambda a, b: torch.matmul(a, b.t()).float())


def sliced_loss_applies(h: Tensor, weight: Tensor) -> bool:
    """Whether sliced_cross_entropy runs here: float32 on oneDNN, or bfloat16 under CPU autocast (elsewhere, GPUs,
    float64, float32 without oneDNN, F.cross_entropy does)."""
    return _slice_kernel(h, weight) is not None


def sliced_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """−(1/N) Σ_i log softmax(W h_i)[t_i] (§3.1 and eq. 2), the vocabulary a slice at a time; h (N, C),
    weight (vocab, C), targets (N,). Where sliced_loss_applies."""
    return SlicedCrossEntropy.apply(h, weight, targets, _slice_kernel(h, weight))


def _slice_kernel(h: Tensor, weight: Tensor) -> SliceKernel | None:
    if takes_onednn(h, weight):
        return FLOAT32_ONEDNN
    if h.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return BFLOAT16
    return None


class SlicedCrossEntropy(torch.autograd.Function):
    """loss = mean_i (logsumexp_v z_iv − z_i,t_i), z = h·Wᵀ. With S = softmax(z) and Y the one-hot targets:
    d loss / dh = (S − Y)·W / N,  d loss / dW = (S − Y)ᵀ·h / N.

    Each slice saves E = exp(z − m), m its row maxima, and S = diag(r)·E on it, r = exp(m − logsumexp z): the
    backward scales the rows of the (N, C) operands by r rather than the (N, 1024) slice.
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, kernel: SliceKernel) -> Tensor:
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < weight.size(0):
            raise ValueError(f"targets must be token ids in [0, {weight.size(0)}), "
                             f"got {int(targets.min())}..{int(targets.max())}")
        h_cast, weight_cast = kernel.cast(h), kernel.cast(weight)
        exps, maxes, sums = [], [], []  # per slice, z = W_φ h_i (§3.1) in float32
        for w in weight_cast.split(VOCAB_SLICE):
            z = kernel.matmul_t(h_cast, w)
            maxes.append(z.amax(-1, keepdim=True))
            e = z.sub_(maxes[-1]).exp_()
            sums.append(e.sum(-1))
            exps.append(kernel.cast(e))
        maxes = torch.cat(maxes, 1)
        log_normalizer = (torch.stack(sums, 1).log_() + maxes).logsumexp(1)
        target_logit = (h * weight[targets]).sum(-1)
        ctx.save_for_backward(h, weight, weight_cast, targets, (maxes - log_normalizer[:, None]).exp_(), *exps)
        ctx.kernel = kernel
        return (log_normalizer - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight, weight_cast, targets, rescale, *exps = ctx.saved_tensors
        matmul_t, cast = ctx.kernel.matmul_t, ctx.kernel.cast
        dh = -weight[targets]  # the one-hot term: −Y·W = −W[t_i]
        dw = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        for i, (e, w) in enumerate(zip(exps, weight_cast.split(VOCAB_SLICE))):
            r = rescale[:, i, None]  # S = r·E on this slice: exp(z − m)·exp(m − logsumexp z)
            dh += r * matmul_t(e, w.t())
            if dw is not None:  # Sᵀ·h = Eᵀ·(r·h) on this slice's rows of W, computed as ((r·h)ᵀ·E)ᵀ because
                rows = slice(i * VOCAB_SLICE, i * VOCAB_SLICE + w.size(0))  # oneDNN copies a transposed left operand
                dw[rows] = matmul_t(cast(r * h).t(), e.t()).t()
        scale = grad / h.size(0)
        if dw is not None:
            dw.index_add_(0, targets, h, alpha=-1).mul_(scale)  # the one-hot term: −Yᵀ·h
        return dh.mul_(scale), dw, None, None


# ---- putting it into a model ---------------------------------------------------------------------------------------

def use_cpu_kernels(*modules: nn.Module) -> None:
    """The fast path in these built modules (a GPT, a method), in place: every nn.Linear becomes a OneDnnLinear where
    the op passed its check at import, every attention takes the bfloat16 rule above, and every GPT's loss is
    gpt_loss. Parameters stay the same objects (the tied LM head stays tied)."""
    for module in modules:
        for m in module.modules():
            if type(m) is nn.Linear and ONEDNN_WORKS:
                m.__class__ = OneDnnLinear  # a subclass that adds no state: only forward changes
            elif isinstance(m, CausalSelfAttention):
                m.attend = attention
            elif isinstance(m, GPT):
                m.loss = types.MethodType(gpt_loss, m)
