"""The language-modeling loss at the positions that have a target: −log softmax(W_φ h_i)[z_{i+1}], averaged.

On CPU in float32, the logits are computed a slice of the vocabulary at a time: each (N, 1024) slice stays in
cache while its logsumexp is taken, and the backward pass reuses it for the softmax, and for the LM head's
gradient when the head trains (full fine-tuning, or pretraining, where it is tied to the token embedding).
That is the same math as F.cross_entropy(h·Wᵀ) without its separate passes over (N, vocab) logits, and
oneDNN runs the narrow matmuls faster than one wide one. Under bfloat16 autocast on CPU the slices are multiplied
in bfloat16 (AMX units on recent Intel CPUs), as autocast would multiply F.linear's, and the softmax stays float32.
"""
import torch
from torch import Tensor
from torch.nn import functional as F

from model.linear import onednn_matmul_t, takes_onednn

VOCAB_SLICE = 1024  # vocabulary rows per matmul: (N, 1024) float32 logits stay in cache for N in the hundreds


def lm_head_loss(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """−(1/N) Σ_i log p(t_i | h_i), p = softmax(W_φ h_i)  (eqs. 2 and 3).

    h (N, C): the final hidden states at the N positions with a target; weight (vocab, C); targets (N,) ids.
    """
    matmul_t = _slice_kernel(h, weight)
    if matmul_t is not None:
        return _SlicedCrossEntropy.apply(h, weight, targets, matmul_t)
    logits = F.linear(h, weight)
    # the softmax in at least float32 (bf16 logits lose the loss's digits), never below the model's dtype
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)


def _slice_kernel(h: Tensor, weight: Tensor):
    """a·bᵀ in float32 for the vocabulary slices, or None where the plain path runs (GPUs, float64, ...)."""
    if takes_onednn(h, weight):
        return onednn_matmul_t
    if h.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return _bfloat16_matmul_t
    return None


def _bfloat16_matmul_t(a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a.bfloat16(), b.bfloat16().t()).float()


class _SlicedCrossEntropy(torch.autograd.Function):
    """loss = mean_i (logsumexp_v z_iv − z_i,t_i), z = h·Wᵀ. With S = softmax(z) and Y the one-hot targets:
    d loss / dh = (S − Y)·W / N,  d loss / dW = (S − Y)ᵀ·h / N."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, matmul_t) -> Tensor:
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < weight.size(0):
            raise ValueError(f"targets must be token ids in [0, {weight.size(0)}), "
                             f"got {int(targets.min())}..{int(targets.max())}")
        exps, maxes = [], []  # per slice: exp(z − m) with m its row maxima, z = W_φ h_i  (eq. 2)
        for w in weight.split(VOCAB_SLICE):
            z = matmul_t(h, w)
            maxes.append(z.amax(-1, keepdim=True))
            exps.append(z.sub_(maxes[-1]).exp_())
        maxes = torch.cat(maxes, 1)
        log_normalizer = (torch.stack([e.sum(-1) for e in exps], 1).log_() + maxes).logsumexp(1)
        target_logit = (h * weight[targets]).sum(-1)
        ctx.save_for_backward(h, weight, targets, (maxes - log_normalizer[:, None]).exp_(), *exps)
        ctx.matmul_t = matmul_t
        return (log_normalizer - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight, targets, rescale, *exps = ctx.saved_tensors
        dh = -weight[targets]  # the one-hot term: −Y·W = −W[t_i]
        dw = torch.empty_like(weight) if ctx.needs_input_grad[1] else None
        for i, (e, w) in enumerate(zip(exps, weight.split(VOCAB_SLICE))):
            softmax = e * rescale[:, i, None]  # S on this slice: exp(z − m)·exp(m − logsumexp z)
            dh += ctx.matmul_t(softmax, w.t())
            if dw is not None:  # Sᵀ·h on this slice's rows of W, as (hᵀ·S)ᵀ: oneDNN copies a transposed left operand
                dw[i * VOCAB_SLICE:i * VOCAB_SLICE + w.size(0)] = ctx.matmul_t(h.t(), softmax.t()).t()
        scale = grad / h.size(0)
        if dw is not None:
            dw.index_add_(0, targets, h, alpha=-1).mul_(scale)  # the one-hot term: −Yᵀ·h
        return dh.mul_(scale), dw, None, None
