"""GPT.loss and the sliced cross-entropy of model/cpu_kernels.py: equal to F.cross_entropy of the full logits,
value and gradient."""
import pytest
import torch
import torch.nn.functional as F

from model import cpu_kernels
from model.cpu_kernels import sliced_cross_entropy, sliced_loss_applies, use_cpu_kernels
from tests.conftest import needs_onednn


def problem(vocab=97, n=23):
    torch.manual_seed(0)
    weight = torch.randn(vocab, 16)
    h = torch.randn(n, 16, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[:4] = torch.tensor([0, 15, 16, vocab - 1])  # both edges of a slice, and the last id
    return h, weight, targets


def reference(h, weight, targets):
    """Loss, dloss/dh and dloss/dW in float64 through the full (N, vocab) logits."""
    h64, w64 = h.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    loss = F.cross_entropy(h64 @ w64.T, targets)
    loss.backward()
    return loss.float(), h64.grad.float(), w64.grad.float()


@needs_onednn
@pytest.mark.parametrize("trainable", [False, True], ids=["frozen head", "trainable head"])
def test_sliced_loss_and_gradients_match_the_full_logits(monkeypatch, trainable):
    monkeypatch.setattr(cpu_kernels, "VOCAB_SLICE", 16)  # 97 = 6 slices of 16 and one of 1
    h, weight, targets = problem()
    targets[4:8] = 15  # a repeated target: its one-hot terms add up in dW
    weight.requires_grad_(trainable)
    assert sliced_loss_applies(h, weight)
    loss = sliced_cross_entropy(h, weight, targets)
    (3 * loss).backward()  # an upstream gradient other than 1 must scale dh and dW
    expected_loss, expected_dh, expected_dw = reference(h, weight, targets)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(h.grad, 3 * expected_dh, atol=1e-6, rtol=1e-5)
    if trainable:
        torch.testing.assert_close(weight.grad, 3 * expected_dw, atol=1e-6, rtol=1e-5)
    else:
        assert weight.grad is None


def gpt_gradients(fast: bool) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of a small GPT's loss (LM head tied to wte), on the fast path or the plain one."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=3000, block_size=32))
    assert gpt.lm_head.weight is gpt.transformer.wte.weight
    idx = torch.randint(0, 3000, (3, 17))
    targets = torch.randint(0, 3000, (3, 17))
    targets[:, :5] = -100
    if fast:
        use_cpu_kernels(gpt)
    _, loss = gpt(idx, targets)
    assert (type(loss.grad_fn).__name__ == "SlicedCrossEntropyBackward") == fast
    loss.backward()
    return {name: p.grad for name, p in gpt.named_parameters()}


@needs_onednn
def test_full_fine_tuning_gradients_equal_the_plain_paths():
    """Through a whole GPT with the tied head: oneDNN Linear layers and the sliced loss against nn.Linear and
    F.cross_entropy (the plain GPT); wte's gradient sums its embedding and LM-head uses."""
    fast, plain = gpt_gradients(fast=True), gpt_gradients(fast=False)
    assert fast.keys() == plain.keys() and "transformer.wte.weight" in fast
    for name, grad in plain.items():
        torch.testing.assert_close(fast[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max().item(), msg=name)


def test_float64_takes_f_cross_entropy():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=97, block_size=16)).double()
    use_cpu_kernels(gpt)
    idx, targets = torch.randint(0, 97, (2, 9)), torch.randint(0, 97, (2, 9))
    targets[:, :3] = -100
    _, loss = gpt(idx, targets)
    assert type(loss.grad_fn).__name__ != "SlicedCrossEntropyBackward"
    logits, _ = gpt(idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 97), targets.view(-1)))


@needs_onednn
@pytest.mark.parametrize("bad", [-100, 97])
def test_a_target_outside_the_vocabulary_raises(bad):
    h, weight, targets = problem()
    targets[5] = bad
    with pytest.raises(ValueError, match="token ids"):
        sliced_cross_entropy(h, weight, targets)


def test_under_cpu_bfloat16_autocast_the_slices_multiply_in_bfloat16_and_match_the_full_logits(monkeypatch):
    """The bfloat16 kernel on the same slices: within bfloat16's precision of the float64 reference, as autocast's
    own F.linear + F.cross_entropy would be."""
    monkeypatch.setattr(cpu_kernels, "VOCAB_SLICE", 16)
    h, weight, targets = problem()
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sliced_loss_applies(h, weight)
        loss = sliced_cross_entropy(h, weight, targets)
    assert type(loss.grad_fn).__name__ == "SlicedCrossEntropyBackward" and loss.dtype == torch.float32
    loss.backward()
    expected_loss, expected_dh, expected_dw = reference(h, weight, targets)
    torch.testing.assert_close(loss, expected_loss, atol=0, rtol=2e-2)
    for got, expected in ((h.grad, expected_dh), (weight.grad, expected_dw)):
        assert (got - expected).norm() / expected.norm() < 2e-2
