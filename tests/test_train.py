"""train.py end to end on a tiny random GPT-2 and the real E2E data: artifacts, resume, DDP, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_script
from model import GPT
from model import safetensors
from prefix import load_prefix

FAST = ["--max_iters", "24", "--eval_interval", "8", "--eval_iters", "4", "--batch_size", "6",
        "--learning_rate", "1e-2", "--log_interval", "4"]


def train(tiny_gpt2, shared, out_dir, *extra, **kwargs):
    return run_script("train.py", "--init_from", tiny_gpt2, "--data_dir", shared / "data" / "e2e",
                      "--out_dir", out_dir, *FAST, *extra, **kwargs)


def val_losses(out_dir):
    return [r["val_loss"] for r in map(json.loads, open(out_dir / "log.jsonl")) if "val_loss" in r]


def test_end_to_end_only_the_prefix_trains_and_validation_loss_falls(tiny_gpt2, shared, tmp_path):
    weights_before = (tiny_gpt2 / "model.safetensors").read_bytes()
    result = train(tiny_gpt2, shared, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "42,061 sequences" in result.stdout and "% of the GPT's" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt.pt", "prefix.safetensors", "prefix_best.safetensors",
                                                    "log.jsonl"}
    losses = val_losses(tmp_path)
    assert len(losses) == 4 and losses[-1] < losses[0]
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["iter"] == 24 and set(state["prefix"]) == {"table", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                            "mlp.2.bias"}
    assert (tiny_gpt2 / "model.safetensors").read_bytes() == weights_before
    # what sample.py does: the base model, then the exported prefix on top
    gpt = GPT.from_pretrained(str(tiny_gpt2))
    prefix = load_prefix(tmp_path / "prefix.safetensors", gpt.config)
    assert prefix.prefix_len == 10 and prefix.mlp is None
    logits, _ = gpt(torch.tensor([[464, 3290]]), prefix=prefix(1))
    assert torch.isfinite(logits).all()


def test_a_run_killed_at_any_moment_and_resumed_ends_bitwise_equal(tiny_gpt2, shared, tmp_path):
    reference = tmp_path / "uninterrupted"
    assert train(tiny_gpt2, shared, reference).returncode == 0
    resumed = tmp_path / "killed"
    command = [sys.executable, "train.py", "--init_from", str(tiny_gpt2), "--data_dir", str(shared / "data" / "e2e"),
               "--out_dir", str(resumed), *FAST]
    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (resumed / "ckpt.pt").exists() and time.time() < deadline:  # killed after a checkpoint exists
        time.sleep(0.05)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = torch.load(resumed / "ckpt.pt", weights_only=True)
    assert state["iter"] < 24, "the run finished before it could be killed"
    result = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming at iteration {state['iter']}" in result.stdout
    assert [json.loads(line)["iter"] for line in open(resumed / "log.jsonl")] == \
        [json.loads(line)["iter"] for line in open(reference / "log.jsonl")]  # one curve, no duplicates
    for name in ("prefix.safetensors", "prefix_best.safetensors"):
        ours, theirs = safetensors.load_file(resumed / name), safetensors.load_file(reference / name)
        assert torch.equal(ours["prefix"], theirs["prefix"])
    final, expected = torch.load(resumed / "ckpt.pt", weights_only=True), torch.load(reference / "ckpt.pt",
                                                                                        weights_only=True)
    assert all(torch.equal(final["prefix"][k], expected["prefix"][k]) for k in expected["prefix"])


def test_ctrl_c_saves_and_exits_and_resume_continues(tiny_gpt2, shared, tmp_path):
    command = [sys.executable, "train.py", "--init_from", str(tiny_gpt2), "--data_dir", str(shared / "data" / "e2e"),
               "--out_dir", str(tmp_path), *FAST, "--max_iters", "100000", "--eval_interval", "100000"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in run.stdout:  # wait until it is training
        if line.startswith("iter 4/"):
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "interrupted at iteration" in out and "Traceback" not in err
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["iter"] >= 4


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_gpt2, shared, tmp_path):
    result = train(tiny_gpt2, shared, tmp_path, "--learning_rate", "1e30", "--eval_interval", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training diverged at iteration" in result.stderr and "is intact" in result.stderr
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["prefix"].values())


@pytest.mark.parametrize("flags,message", [
    (["--prefix_len", "0"], "--prefix_len must be a positive integer"),
    (["--prefix_len=-3"], "--prefix_len must be a positive integer"),
    (["--batch_size", "0"], "--batch_size must be a positive integer"),
    (["--prefix_len", "200"], "exceeds the model's 256 positions"),
    (["--dataset", "wikitext"], "invalid choice: 'wikitext'"),
    (["--init_from", "/nonexistent/gpt"], "neither a checkpoint directory nor one of gpt2"),
    (["--init_text", "table-to-text:"], "use --prefix_len"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--learn", "1e-3"], "unrecognized arguments: --learn"),  # an abbreviation would dodge --resume's check
    (["--grad_clip", "-1"], "--grad_clip must be a positive number"),
    (["--eval_iters", "-1"], "--eval_iters must be 0 or more"),
    (["--prefix_dropout", "2"], "--prefix_dropout must be at least 0 and below 1"),
    (["--variant", "infix", "--positions_from_zero"], "an infix follows the table"),
    (["--device", "meta"], "unknown --device 'meta'"),
    (["--resume"], "--resume found no"),
])
def test_bad_input_is_one_sentence_and_a_nonzero_exit(tiny_gpt2, shared, tmp_path, flags, message):
    result = train(tiny_gpt2, shared, tmp_path / "run", *flags, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_missing_pretrained_weights_offline(shared, tmp_path):
    """gpt2 with no network and nothing cached: the sentence that says how to supply it, nothing else."""
    result = run_script("train.py", "--data_dir", shared / "data" / "e2e", "--out_dir", tmp_path,
                        env={"HF_ENDPOINT": "http://127.0.0.1:9", "PREFIX_TUNING_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2 and result.stderr.count("\n") == 1  # the sentence alone
    assert result.stderr.startswith("error: could not download gpt2 config.json")
    assert "--init_from path/to/gpt2" in result.stderr


def test_resume_refuses_to_change_the_run(tiny_gpt2, shared, tmp_path):
    assert train(tiny_gpt2, shared, tmp_path, "--max_iters", "8").returncode == 0
    result = train(tiny_gpt2, shared, tmp_path, "--resume", "--learning_rate", "5e-3")
    assert result.returncode == 2 and "contradicts the run being resumed" in result.stderr


def test_out_dir_that_is_a_file_is_one_sentence(tiny_gpt2, shared, tmp_path):
    (tmp_path / "taken").write_text("")
    result = train(tiny_gpt2, shared, tmp_path / "taken", timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is a file, not a directory" in result.stderr


def test_a_new_run_starts_a_new_log_and_resume_survives_a_torn_last_line(tiny_gpt2, shared, tmp_path):
    assert train(tiny_gpt2, shared, tmp_path, "--max_iters", "8").returncode == 0
    assert train(tiny_gpt2, shared, tmp_path, "--max_iters", "8").returncode == 0  # again, not resumed
    iters = [json.loads(line)["iter"] for line in open(tmp_path / "log.jsonl")]
    assert iters.count(0) == 1  # one run's curve, not two appended
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"iter": 9, "train_lo')  # a crash in the middle of a line
    result = train(tiny_gpt2, shared, tmp_path, "--max_iters", "8", "--resume")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["iter"] for line in open(tmp_path / "log.jsonl")] == iters


def test_resume_with_another_number_of_processes_is_refused(tiny_gpt2, shared, tmp_path):
    assert train(tiny_gpt2, shared, tmp_path, "--max_iters", "8").returncode == 0
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["rng"] = state["rng"] * 2  # as if two processes had trained it
    torch.save(state, tmp_path / "ckpt.pt")
    result = train(tiny_gpt2, shared, tmp_path, "--max_iters", "8", "--resume")
    assert result.returncode == 2 and "trained by 2 process(es)" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_option_with_its_default():
    result = run_script("train.py", "--help")
    assert result.returncode == 0
    for flag in ("--init_from", "--dataset", "--data_dir", "--prefix_len", "--mid_dim", "--batch_size",
                 "--learning_rate", "--epochs", "--max_iters", "--eval_interval", "--out_dir", "--device", "--dtype",
                 "--seed", "--resume", "--variant", "--init_text"):
        assert flag in result.stdout
    assert "(default: 10)" in result.stdout and "(default: gpt2)" in result.stdout


@pytest.mark.parametrize("variant", ["embedding-only", "infix"])
def test_ablation_variants_train_end_to_end(tiny_gpt2, shared, tmp_path, variant):
    result = train(tiny_gpt2, shared, tmp_path, "--variant", variant, "--max_iters", "16")
    assert result.returncode == 0, result.stderr
    losses = val_losses(tmp_path)
    assert losses[-1] < losses[0]


def test_ddp_with_two_gloo_processes_ends_with_the_same_prefix(tiny_gpt2, shared, tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(29500 + os.getpid() % 1000), "train.py", "--init_from",
                             str(tiny_gpt2), "--data_dir", str(shared / "data" / "e2e"), "--out_dir", str(tmp_path),
                             "--device", "cpu", *FAST, "--max_iters", "12"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 processes hold the same prefix" in result.stdout
    assert "global batch 12" in result.stdout
    assert val_losses(tmp_path)[-1] < val_losses(tmp_path)[0]
