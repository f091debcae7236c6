"""The language-modeling loss at the positions that have a target: −log softmax(W_φ h_i)[z_{i+1}], averaged."""
import torch
from torch import Tensor
from torch.nn import functional as F

from model import cpu_kernels


def lm_head_loss(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """−(1/N) Σ_i log p(t_i | h_i), p = softmax(W_φ h_i)  (eqs. 2 and 3).

    h (N, C): final hidden states; weight (vocab, C); targets (N,) ids, or -100 where a position has none (on the
    plain path only: the CPU fast path is given the positions with a target alone).
    """
    if cpu_kernels.sliced_loss_applies(h, weight):  # the same loss without (N, vocab) logits: model/cpu_kernels.py
        return cpu_kernels.sliced_cross_entropy(h, weight, targets)
    logits = F.linear(h, weight)  # W_φ h_i  (eq. 2)
    # the softmax in at least float32 (bf16 logits lose the loss's digits), never below the model's dtype
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets)
