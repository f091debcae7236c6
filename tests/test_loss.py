"""model/loss.py: the vocabulary-sliced cross-entropy equals F.cross_entropy of the full logits, value and gradient."""
import pytest
import torch
import torch.nn.functional as F

from model import loss as loss_module
from model.loss import lm_head_loss
from tests.conftest import needs_onednn


def problem(vocab=97, n=23):
    torch.manual_seed(0)
    weight = torch.randn(vocab, 16)
    h = torch.randn(n, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[:4] = torch.tensor([0, 15, 16, vocab - 1])  # both edges of a slice, and the last id
    return h, weight, targets


def reference(h, weight, targets):
    """Loss and dloss/dh in float64 through the full (N, vocab) logits."""
    h64 = h.detach().double().requires_grad_()
    loss = F.cross_entropy(h64 @ weight.double().T, targets)
    loss.backward()
    return loss.float(), h64.grad.float()


@needs_onednn
def test_sliced_loss_and_gradient_match_the_full_logits(monkeypatch):
    monkeypatch.setattr(loss_module, "VOCAB_SLICE", 16)  # 97 = 6 slices of 16 and one of 1
    h, weight, targets = problem()
    loss = lm_head_loss(h, weight, targets)
    assert type(loss.grad_fn).__name__ == "_SlicedCrossEntropyBackward"
    (3 * loss).backward()  # an upstream gradient other than 1 must scale dh
    expected_loss, expected_grad = reference(h, weight, targets)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(h.grad, 3 * expected_grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["trainable weight", "float64"])
def test_other_cases_take_f_cross_entropy(case):
    h, weight, targets = problem()
    if case == "trainable weight":
        weight.requires_grad_()
    else:
        h, weight = h.detach().double().requires_grad_(), weight.double()
    loss = lm_head_loss(h, weight, targets)
    assert type(loss.grad_fn).__name__ != "_SlicedCrossEntropyBackward"
    torch.testing.assert_close(loss, F.cross_entropy(h @ weight.T, targets).to(loss.dtype))


@needs_onednn
@pytest.mark.parametrize("bad", [-100, 97])
def test_a_target_outside_the_vocabulary_raises(bad):
    h, weight, targets = problem()
    targets[5] = bad
    with pytest.raises(ValueError, match="token ids"):
        lm_head_loss(h, weight, targets)
