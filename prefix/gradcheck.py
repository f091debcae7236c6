"""Gradient checks: the paper's equations, differentiated by hand, against autograd and finite differences.

    python -m prefix.gradcheck

builds a tiny GPT in float64 on the CPU, runs every check, prints one row per check (its max error, its
tolerance, pass/FAIL) and exits non-zero when a row fails. docs/gradients.md derives what each row verifies.

Errors are relative: max|got − want| / max|want| (absolute when want is all zeros), so a check cannot pass
merely because the gradients are tiny. Closed forms must agree to 1e-10 (float64 rounding is ~1e-16); finite
differences to 1e-6 (their truncation error is O(ε²)). Counts and bitwise comparisons allow no error at all. The CPU
fast path's float32 backwards (model/cpu_kernels.py) must agree with float64 autograd to 1e-5, about 100 times float32's
rounding (6e-8); where that path is not available their rows are skipped, with the reason.
"""
from __future__ import annotations

import copy
import math
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn import functional as F

from model import cpu_kernels
from model.cache import KV
from model.cpu_kernels import FLOAT32_ONEDNN, OneDnnLinearFunction, SlicedCrossEntropy
from model.gpt import GPT, GPTConfig
from prefix.tuning import PrefixTuning, freeze, prefix_keys_values

CLOSED_FORM_TOL = 1e-10
FINITE_DIFFERENCE_TOL = 1e-6
FINITE_DIFFERENCE_EPS = 1e-6
FLOAT32_TOL = 1e-5
EXACT = 0.0


@dataclass(frozen=True)
class Result:
    """One row of the table."""
    check: str
    error: float
    tolerance: float
    skipped: str = ""  # why the row did not run here; a skipped row does not fail

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or self.error <= self.tolerance  # False for NaN


@dataclass
class Setup:
    """A tiny frozen GPT, a prefix with its MLP, and a batch whose targets are -100 at some positions."""
    gpt: GPT
    prefix: PrefixTuning
    idx: Tensor
    targets: Tensor


def tiny_setup(seed: int = 0) -> Setup:
    """n_layer=2, n_head=3, n_embd=12, vocab 50, prefix_len 3, mid_dim 8, B=2, T=6; float64, deterministic."""
    config = GPTConfig(n_layer=2, n_head=3, n_embd=12, vocab_size=50, block_size=16)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        gpt = GPT(config).double()
        with torch.no_grad():  # GPT-2's init (std 0.02) leaves attention nearly uniform: make it peaked, biases nonzero
            for p in gpt.parameters():
                p.copy_(10 * p if p.dim() > 1 else p + 0.1 * torch.randn_like(p))
        prefix = PrefixTuning(config, prefix_len=3, mid_dim=8).double()
        idx = torch.randint(0, config.vocab_size, (2, 6))
        targets = torch.randint(0, config.vocab_size, (2, 6))
    targets[0, :2] = targets[1, 4:] = -100  # i ∉ Y_idx: no loss there
    return Setup(freeze(gpt), prefix, idx, targets)


# ---- the loss --------------------------------------------------------------------------------------------------

def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Eq. (2), as a mean to minimize: −log p(z_i | h_<i) averaged over i ∈ Y_idx (targets ≠ -100)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


def loss_with_prefix(s: Setup, kv: list[KV]) -> Tensor:
    """The GPT's own loss (eq. 2, in float64 here) on the batch, with per-layer (P_K, P_V) as its prefix."""
    return s.gpt(s.idx, s.targets, prefix=kv)[1]


def loss_of_rows(s: Setup, P: Tensor) -> Tensor:
    """The loss as a function of the prefix rows P (prefix_len, n_layer·2·n_embd), shared by the batch."""
    return loss_with_prefix(s, prefix_keys_values(P.unsqueeze(0), s.gpt.config))


def max_error(got: Tensor, want: Tensor) -> float:
    """max |got − want| / max |want|; absolute when want is all zeros."""
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / (scale or 1.0)


def heads(t: Tensor, n_head: int) -> Tensor:
    """(B, T, C) → (B, n_head, T, C / n_head): the per-head view attention works in."""
    B, T, C = t.shape
    return t.view(B, T, n_head, C // n_head).transpose(1, 2)


# ---- attention with a prefix -----------------------------------------------------------------------------------

def softmax_backward(A: Tensor, dA: Tensor) -> Tensor:
    """dS for A = softmax(S) row-wise: dS = A ⊙ (dA − rowsum(dA ⊙ A))."""
    return A * (dA - (dA * A).sum(-1, keepdim=True))


def attention_backward(Q: Tensor, K: Tensor, V: Tensor, mask: Tensor, dO: Tensor) -> tuple[Tensor, Tensor]:
    """dK', dV' of O = softmax(Q K'ᵀ / √d + mask) V' by the closed form, with K' = [P_K ; K], V' = [P_V ; V].

    mask: bool, True where a query may look (with a prefix the GPT always builds one); −∞ elsewhere.
    """
    d = Q.size(-1)
    A = (Q @ K.transpose(-2, -1) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1)
    dV = A.transpose(-2, -1) @ dO                              # dV' = Aᵀ dO
    dS = softmax_backward(A, dO @ V.transpose(-2, -1))         # dA = dO V'ᵀ
    return dS.transpose(-2, -1) @ Q / math.sqrt(d), dV         # dK' = dSᵀ Q / √d


def check_attention(s: Setup, backward: Callable = attention_backward) -> list[Result]:
    """Per layer and head: autograd's dL/dP_K, dL/dP_V against the closed form's prefix rows.

    Forward hooks record, for every layer of a real forward pass, the attention's input x (after ln_1), its
    mask, its K' and V' (the module returns them) and O, the heads' output entering c_proj; Q is recomputed
    from x. Autograd gives dO, and the closed form carries it back to K' and V'.
    """
    attns = [block.attn for block in s.gpt.transformer.h]
    seen: dict[nn.Module, tuple] = {}
    with ExitStack() as hooks:
        for module in [m for attn in attns for m in (attn, attn.c_proj)]:
            hooks.enter_context(module.register_forward_hook(lambda m, args, out: seen.update({m: (args, out)})))
        kv = s.prefix(s.idx.size(0))
        loss = loss_with_prefix(s, kv)
    O = [seen[attn.c_proj][0][0] for attn in attns]
    grads = torch.autograd.grad(loss, [t for pair in kv for t in pair] + O)
    d_prefix, dO = grads[:2 * len(attns)], grads[2 * len(attns):]
    n_head, C, P = s.gpt.config.n_head, s.gpt.config.n_embd, s.prefix.prefix_len
    results = []
    for l, attn in enumerate(attns):
        (x, mask, _), (_, (K, V)) = seen[attn]
        with torch.no_grad():
            Q = heads(attn.c_attn(x)[..., :C], n_head)
            dK, dV = backward(Q, K, V, mask, heads(dO[l], n_head))
        dPK, dPV = d_prefix[2 * l], d_prefix[2 * l + 1]
        for h in range(n_head):
            error = max(max_error(dPK[:, h], dK[:, h, :P]), max_error(dPV[:, h], dV[:, h, :P]))
            results.append(Result(f"attention dP_K, dP_V closed form, layer {l} head {h}", error, CLOSED_FORM_TOL))
    return results


# ---- the reparameterization P = MLP(P') -----------------------------------------------------------------------

def linear_input_grad(dy: Tensor, weight: Tensor) -> Tensor:
    """y = x Wᵀ + b  ⇒  dx = dy W."""
    return dy @ weight


def linear_weight_grads(dy: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """y = x Wᵀ + b  ⇒  dW = dyᵀ x, db = Σ_rows dy."""
    return dy.transpose(-2, -1) @ x, dy.sum(0)


def mlp_backward(mlp: nn.Sequential, table: Tensor, dP: Tensor) -> tuple[Tensor, ...]:
    """§4.3's P = MLP(P') backwards: dL/dP' = J_MLP(P')ᵀ dL/dP, and dW_1, db_1, dW_2, db_2, by the chain rule."""
    first, _, second = mlp
    h = mlp[:2](table)                                            # h = tanh(P' W_1ᵀ + b_1); P = h W_2ᵀ + b_2
    dW2, db2 = linear_weight_grads(dP, h)
    dpre = linear_input_grad(dP, second.weight) * (1 - h ** 2)   # tanh' = 1 − tanh²
    dW1, db1 = linear_weight_grads(dpre, table)
    return linear_input_grad(dpre, first.weight), dW1, db1, dW2, db2


def check_reparameterization(s: Setup, backward: Callable = mlp_backward) -> list[Result]:
    """Autograd's gradients of P' and of the MLP's weights against the chain rule applied to autograd's dL/dP."""
    mlp, table = s.prefix.mlp, s.prefix.table
    P = s.prefix.activations()
    dP, *want = torch.autograd.grad(loss_of_rows(s, P), [P, table, mlp[0].weight, mlp[0].bias,
                                                           mlp[2].weight, mlp[2].bias])
    with torch.no_grad():
        got = backward(mlp, table, dP)
    names = ["dL/dP' = J_MLPᵀ dL/dP", "dW_1", "db_1", "dW_2", "db_2"]
    return [Result(f"§4.3 chain rule, {name}", max_error(g, w), CLOSED_FORM_TOL)
            for name, g, w in zip(names, got, want)]


# ---- finite differences ----------------------------------------------------------------------------------------

def central_differences(loss: Callable[[], Tensor], x: Tensor, coords: list[int],
                        eps: float = FINITE_DIFFERENCE_EPS) -> Tensor:
    """dL/dx_i ≈ (L(x + ε e_i) − L(x − ε e_i)) / 2ε at flat indices i; x is restored exactly."""
    flat, estimates = x.detach().view(-1), []
    with torch.no_grad():
        for i in coords:
            old = flat[i].item()
            flat[i] = old + eps
            plus = loss()
            flat[i] = old - eps
            minus = loss()
            flat[i] = old
            estimates.append((plus - minus) / (2 * eps))
    return torch.stack(estimates)


def autograd_gradients(loss: Callable[[], Tensor], tensors: list[Tensor]) -> tuple[Tensor, ...]:
    """dL/dx for each x in tensors, by backpropagation."""
    return torch.autograd.grad(loss(), tensors)


def finite_difference_result(name: str, loss: Callable[[], Tensor], tensors: list[Tensor], gradients: Callable,
                             generator: torch.Generator, per_tensor: int = 8) -> Result:
    """`gradients(loss, tensors)` against central differences at `per_tensor` random coordinates of each tensor."""
    grads = gradients(loss, tensors)
    got, want = [], []
    for x, g in zip(tensors, grads):
        coords = torch.randint(0, x.numel(), (per_tensor,), generator=generator).tolist()
        got.append(g.reshape(-1)[coords])
        want.append(central_differences(loss, x, coords))
    return Result(f"finite differences, {name}", max_error(torch.cat(got), torch.cat(want)), FINITE_DIFFERENCE_TOL)


def check_finite_differences(s: Setup, gradients: Callable = autograd_gradients) -> list[Result]:
    """Autograd against central differences of the real loss, on random coordinates of P', the MLP and P."""
    generator = torch.Generator().manual_seed(0)
    whole = lambda: loss_with_prefix(s, s.prefix(s.idx.size(0)))
    P = s.prefix.activations().detach().requires_grad_()
    return [
        finite_difference_result("P'", whole, [s.prefix.table], gradients, generator),
        finite_difference_result("MLP weights", whole, list(s.prefix.mlp.parameters()), gradients, generator, 4),
        finite_difference_result("P", lambda: loss_of_rows(s, P), [P], gradients, generator),
    ]


# ---- the frozen GPT --------------------------------------------------------------------------------------------

def check_frozen_gpt(s: Setup, steps: int = 3) -> list[Result]:
    """AdamW on (a copy of) the prefix: the GPT gets no gradient and stays bitwise equal; the parameter counts."""
    prefix, before = copy.deepcopy(s.prefix), copy.deepcopy(s.gpt.state_dict())
    optimizer = torch.optim.AdamW(prefix.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_with_prefix(s, prefix(s.idx.size(0))).backward()
        optimizer.step()
    with_grad = sum(p.grad is not None for p in s.gpt.parameters())
    changed = max((t - before[name]).abs().max().item() for name, t in s.gpt.state_dict().items())
    c, P, k = s.gpt.config, prefix.prefix_len, prefix.mlp[0].out_features
    width = c.n_layer * 2 * c.n_embd
    trainable = sum(p.numel() for p in prefix.parameters() if p.requires_grad)
    stored = sum(p.numel() for p in prefix.export().parameters())
    return [
        Result("frozen GPT: parameters with a gradient", with_grad, EXACT),
        Result(f"frozen GPT: max change after {steps} AdamW steps", changed, EXACT),
        # P'·n_embd + (n_embd·k + k) + (k·n_layer·2·n_embd + n_layer·2·n_embd): P' and the MLP, while training
        Result("count: trainable = P·C + C·k + k + k·2LC + 2LC",
               abs(trainable - (P * c.n_embd + c.n_embd * k + k + k * width + width)), EXACT),
        Result("count: stored after export = P × n_layer × 2 × n_embd", abs(stored - P * width), EXACT),
    ]


# ---- eq. (3): activations versus keys and values ---------------------------------------------------------------

def overwrite_first_positions(h: Tensor) -> Callable:
    """A forward pre-hook for a Block: its input at the first h.size(0) positions becomes h."""
    def hook(block: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        return (torch.cat([h.expand(x.size(0), -1, -1), x[:, h.size(0):]], 1), *rest)
    return hook


def activation_form_logits(gpt: GPT, H: Tensor, idx: Tensor) -> Tensor:
    """Eq. (3) literally: h_i = H[l, i] at the prefix positions i, in every layer l.

    The GPT reads [P placeholder tokens ; idx], and the hidden state entering block l at the prefix positions
    is overwritten with H[l]. Returns the logits of idx's positions.
    """
    P = H.size(1)
    with ExitStack() as hooks:
        for h, block in zip(H, gpt.transformer.h):
            hooks.enter_context(block.register_forward_pre_hook(overwrite_first_positions(h)))
        placeholders = idx.new_zeros(idx.size(0), P)  # any token: block 0's hook replaces its embedding
        return gpt(torch.cat([placeholders, idx], 1))[0][:, P:]


def keys_values_of_activations(gpt: GPT, H: Tensor) -> list[KV]:
    """The K/V form of H: each layer's key and value of its prefix activations, k|v = ln_1(H[l]) W_k|v + b_k|v."""
    C, n_head = gpt.config.n_embd, gpt.config.n_head
    kv = []
    for h, block in zip(H, gpt.transformer.h):
        _, k, v = block.attn.c_attn(block.ln_1(h)).split(C, dim=-1)
        kv.append((heads(k.unsqueeze(0), n_head), heads(v.unsqueeze(0), n_head)))
    return kv


def check_activation_form(s: Setup) -> list[Result]:
    """Eq. (3) and the K/V form agree: the same logits, and the same dL/dH (autograd through the projection).

    "Activation" here is the paper's h_i for a prefix position i: the hidden state entering block l (the
    residual stream, before ln_1), one (prefix_len × n_embd) matrix H[l] per layer. Later positions read a
    prefix position only through its key and value in each layer, so the K/V form loses nothing; it is also
    more general (2·n_embd free numbers per layer and position instead of n_embd) and is what the paper's
    code, PEFT and this repository store.
    """
    c = s.gpt.config
    generator = torch.Generator().manual_seed(0)
    H = torch.randn(c.n_layer, s.prefix.prefix_len, c.n_embd, generator=generator, dtype=torch.float64,
                    requires_grad=True)
    by_activations = activation_form_logits(s.gpt, H, s.idx)
    by_keys_values = s.gpt(s.idx, prefix=keys_values_of_activations(s.gpt, H))[0]
    (d_activations,) = torch.autograd.grad(lm_loss(by_activations, s.targets), H)
    (d_keys_values,) = torch.autograd.grad(lm_loss(by_keys_values, s.targets), H)
    return [
        Result("eq. 3 vs K/V form: logits", max_error(by_keys_values, by_activations), CLOSED_FORM_TOL),
        Result("eq. 3 vs K/V form: dL/dH", max_error(d_keys_values, d_activations), CLOSED_FORM_TOL),
    ]


# ---- the CPU fast path's hand-written float32 backwards ----------------------------------------------------------

def onednn_linear_gradients(x: Tensor, weight: Tensor, bias: Tensor, dy: Tensor) -> tuple[Tensor, ...]:
    """dx, dW, db of y = x·Wᵀ + b by OneDnnLinearFunction's backward (oneDNN): dx = dy·W, dW = dyᵀ·x, db = Σ dy."""
    x, weight, bias = (t.detach().requires_grad_() for t in (x, weight, bias))
    return torch.autograd.grad(OneDnnLinearFunction.apply(x, weight, bias), (x, weight, bias), dy)


def sliced_loss_gradients(h: Tensor, weight: Tensor, targets: Tensor) -> tuple[Tensor, ...]:
    """dh, dW of eq. (2) by SlicedCrossEntropy's backward (oneDNN): (S − Y)·W / N and (S − Y)ᵀ·h / N, a slice of the
    vocabulary at a time, the softmax S rebuilt from each slice's saved logits."""
    h, weight = (t.detach().requires_grad_() for t in (h, weight))
    return torch.autograd.grad(SlicedCrossEntropy.apply(h, weight, targets, FLOAT32_ONEDNN), (h, weight))


def check_cpu_kernels(s: Setup, linear_gradients: Callable = onednn_linear_gradients,
                      loss_gradients: Callable = sliced_loss_gradients) -> list[Result]:
    """What runs on an x86 CPU in float32: both hand-written backwards against float64 autograd of the plain formulas.

    The Linear is the tiny GPT's first c_attn in float32, on a (B, T, C) input; the loss runs over a vocabulary of
    two and a half slices, with targets on both sides of a slice boundary and in the last, partial slice.
    """
    linear_rows = ["oneDNN Linear dx", "oneDNN Linear dW", "oneDNN Linear db"]
    loss_rows = ["sliced cross-entropy dh", "sliced cross-entropy dW"]
    names = [f"float32 fast path vs float64, {name}" for name in linear_rows + loss_rows]
    if not cpu_kernels.ONEDNN_WORKS:
        reason = "no oneDNN fast path here (not x86-64, a torch without oneDNN, or its op failed the check at import)"
        return [Result(name, math.nan, FLOAT32_TOL, skipped=reason) for name in names]
    generator = torch.Generator().manual_seed(0)
    c_attn = s.gpt.transformer.h[0].attn.c_attn
    weight, bias = c_attn.weight.detach().float(), c_attn.bias.detach().float()
    x = torch.randn(*s.idx.shape, weight.size(1), generator=generator)
    dy = torch.randn(*s.idx.shape, weight.size(0), generator=generator)
    x64, w64, b64 = (t.double().requires_grad_() for t in (x, weight, bias))
    want = torch.autograd.grad(F.linear(x64, w64, b64), (x64, w64, b64), dy.double())
    got = linear_gradients(x, weight, bias, dy)

    slice_rows = cpu_kernels.VOCAB_SLICE
    head = torch.randn(2 * slice_rows + slice_rows // 2, s.gpt.config.n_embd, generator=generator)
    h = torch.randn(8, s.gpt.config.n_embd, generator=generator)
    targets = torch.tensor([0, 7, slice_rows - 1, slice_rows, slice_rows + 3, 2 * slice_rows, head.size(0) - 1, 7])
    h64, head64 = h.double().requires_grad_(), head.double().requires_grad_()
    want += torch.autograd.grad(F.cross_entropy(h64 @ head64.t(), targets), (h64, head64))
    got += loss_gradients(h, head, targets)
    return [Result(name, max_error(g.double(), w), FLOAT32_TOL) for name, g, w in zip(names, got, want)]


# ---- the table -------------------------------------------------------------------------------------------------

CHECKS = (check_attention, check_reparameterization, check_finite_differences, check_frozen_gpt,
          check_activation_form, check_cpu_kernels)


def format_table(results: list[Result]) -> str:
    """A header, then one line per result: check, max error, tolerance, pass/FAIL."""
    width = max([len("check")] + [len(r.check) for r in results])
    line = lambda check, error, tol, verdict: f"{check:<{width}}  {error:>10}  {tol:>10}  {verdict}"
    rows = [line("check", "max error", "tolerance", "result"), "-" * (width + 32)]
    rows += [line(r.check, "-" if r.skipped else f"{r.error:.2e}", f"{r.tolerance:.0e}" if r.tolerance else "0",
                  f"skipped: {r.skipped}" if r.skipped else "pass" if r.passed else "FAIL") for r in results]
    return "\n".join(rows)


def main() -> int:
    torch.set_num_threads(1)  # tensors this small only lose time to threads
    s = tiny_setup()
    results = [r for check in CHECKS for r in check(s)]
    failed, skipped = sum(not r.passed for r in results), sum(bool(r.skipped) for r in results)
    print(format_table(results))
    print(f"\n{len(results) - failed - skipped} of {len(results)} checks pass" + (f", {failed} FAIL" if failed else "")
          + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
