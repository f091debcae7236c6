"""The language-modeling loss at the positions that have a target: −log softmax(W_φ h_i)[z_{i+1}], averaged.

On CPU in float32 with a frozen LM head, the logits are computed a slice of the vocabulary at a time: each
(N, 1024) slice stays in cache while its logsumexp is taken, and the backward pass reuses it for the softmax.
That is the same math as F.cross_entropy(h·Wᵀ) without its separate passes over (N, vocab) logits, and
oneDNN runs the narrow matmuls faster than one wide one.
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
    if takes_onednn(h, weight) and not weight.requires_grad:
        return _SlicedCrossEntropy.apply(h, weight, targets)
    logits = F.linear(h, weight)
    # the softmax in at least float32 (bf16 logits lose the loss's digits), never below the model's dtype
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)


class _SlicedCrossEntropy(torch.autograd.Function):
    """loss = mean_i (logsumexp_v z_iv − z_i,t_i), z = h·Wᵀ; d loss / dh_i = (softmax(z_i)·W − W[t_i]) / N."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < weight.size(0):
            raise ValueError(f"targets must be token ids in [0, {weight.size(0)}), "
                             f"got {int(targets.min())}..{int(targets.max())}")
        slices = [onednn_matmul_t(h, w) for w in weight.split(VOCAB_SLICE)]  # W_φ h_i  (eq. 2)
        log_normalizer = torch.stack([z.logsumexp(-1) for z in slices]).logsumexp(0)
        target_logit = (h * weight[targets]).sum(-1)
        ctx.save_for_backward(h, weight, targets, log_normalizer, *slices)
        return (log_normalizer - target_logit).mean()

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight, targets, log_normalizer, *slices = ctx.saved_tensors
        dh = -weight[targets]  # the one-hot term: −W[t_i]
        for z, w in zip(slices, weight.split(VOCAB_SLICE)):
            softmax = (z - log_normalizer[:, None]).exp_()  # this slice of the vocabulary
            dh += onednn_matmul_t(softmax, w.t())
        return dh.mul_(grad / h.size(0)), None, None
