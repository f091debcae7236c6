"""prefix/gradcheck.py: every check passes, the command prints its table, and a wrong gradient is caught."""
import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefix import gradcheck
from model import cpu_kernels
from prefix.gradcheck import (CHECKS, Result, attention_backward, autograd_gradients, check_attention,
                              check_cpu_kernels, check_finite_differences, check_frozen_gpt, check_reparameterization,
                              mlp_backward, onednn_linear_gradients, sliced_loss_gradients, tiny_setup)
from tests.conftest import needs_onednn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As in gradcheck.main: tensors this small only lose time to threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_every_row_of_the_check_passes(setup, check):
    results = check(setup)
    assert results and all(r.passed for r in results), gradcheck.format_table(results)


def test_the_command_prints_the_table_and_exits_zero():
    done = subprocess.run([sys.executable, "-m", "prefix.gradcheck"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].split() == ["check", "max", "error", "tolerance", "result"]
    assert "FAIL" not in done.stdout


def test_main_exits_non_zero_when_a_row_fails(monkeypatch, capsys):
    monkeypatch.setattr(gradcheck, "CHECKS", (lambda s: [Result("a failing row", 1.0, 0.5)],))
    assert gradcheck.main() == 1
    assert "a failing row" in capsys.readouterr().out


def off_by(gradients, relative: float):
    """The same gradient function with every gradient scaled by (1 + relative): a tiny, deliberate error."""
    return lambda *args: tuple(g * (1 + relative) for g in gradients(*args))


@pytest.mark.parametrize("wrong_check", [
    lambda s: check_attention(s, backward=off_by(attention_backward, 1e-8)),
    lambda s: check_reparameterization(s, backward=off_by(mlp_backward, 1e-8)),
    lambda s: check_finite_differences(s, gradients=off_by(autograd_gradients, 1e-4)),
], ids=["attention-closed-form", "mlp-chain-rule", "autograd-vs-finite-differences"])
def test_a_gradient_off_by_a_little_more_than_the_tolerance_fails_every_row(setup, wrong_check):
    """Errors 100x the tolerance are caught, so no row passes vacuously (e.g. on gradients that are all zero)."""
    results = wrong_check(setup)
    assert results and not any(r.passed for r in results), gradcheck.format_table(results)


@needs_onednn
@pytest.mark.parametrize("wrong", ["oneDNN Linear", "sliced cross-entropy"])
def test_a_hand_written_float32_backward_off_by_100x_the_tolerance_fails_its_rows(setup, wrong):
    """Each of the CPU fast path's backwards, perturbed alone, fails exactly its own rows."""
    perturbed = (dict(linear_gradients=off_by(onednn_linear_gradients, 1e-3)) if wrong == "oneDNN Linear"
                 else dict(loss_gradients=off_by(sliced_loss_gradients, 1e-3)))
    results = check_cpu_kernels(setup, **perturbed)
    assert [r.check for r in results if not r.passed] == [r.check for r in results if wrong in r.check] != []


def test_without_the_fast_path_its_rows_are_skipped_with_the_reason(setup, monkeypatch, capsys):
    monkeypatch.setattr(cpu_kernels, "ONEDNN_WORKS", False)
    results = check_cpu_kernels(setup)
    assert len(results) == 5 and all(r.passed and "no oneDNN fast path here" in r.skipped for r in results)
    monkeypatch.setattr(gradcheck, "CHECKS", (check_cpu_kernels,))
    assert gradcheck.main() == 0
    out = capsys.readouterr().out
    assert out.count("skipped: no oneDNN fast path here") == 5 and "0 of 5 checks pass, 5 skipped" in out


def test_a_gpt_that_is_not_frozen_fails(setup):
    trainable_gpt = copy.deepcopy(setup.gpt).requires_grad_(True)
    results = {r.check: r for r in check_frozen_gpt(dataclasses.replace(setup, gpt=trainable_gpt))}
    assert not results["frozen GPT: parameters with a gradient"].passed
