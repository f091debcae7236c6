"""train.py end to end on a tiny random GPT-2 and the real E2E data: artifacts, resume, DDP, bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import sample
import train as train_py
from conftest import ROOT, run_main, run_script
from model import GPT
from model import safetensors
from prefix import load_prefix

FAST = ["--max_iters", "24", "--eval_interval", "8", "--eval_iters", "4", "--batch_size", "6",
        "--learning_rate", "1e-2", "--log_interval", "4"]


def train(tiny_gpt2, e2e_dir, out_dir, *extra):
    return run_main(train_py.main, "--init_from", tiny_gpt2, "--data_dir", e2e_dir, "--out_dir", out_dir, *FAST, *extra)


def val_losses(out_dir):
    return [r["val_loss"] for r in map(json.loads, open(out_dir / "log.jsonl")) if "val_loss" in r]


@pytest.mark.full_data
def test_end_to_end_only_the_prefix_trains_and_validation_loss_falls(tiny_gpt2, e2e_dir, tmp_path):
    weights_before = (tiny_gpt2 / "model.safetensors").read_bytes()
    result = train(tiny_gpt2, e2e_dir, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "42,061 sequences" in result.stdout and "% of the GPT's" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt.pt", "prefix.safetensors", "prefix_best.safetensors",
                                                    "log.jsonl", "config.json"}
    assert "wall, " in result.stdout and "tokens trained" in result.stdout and "peak memory" in result.stdout
    # every artifact carries the run's id; config.json holds every setting after defaults and the GPT's shape
    settings = json.loads((tmp_path / "config.json").read_text())
    run_id = settings["run_id"]
    assert {json.loads(line)["run_id"] for line in open(tmp_path / "log.jsonl")} == {run_id}
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["run_id"] == run_id
    for name in ("prefix.safetensors", "prefix_best.safetensors"):
        assert safetensors.load_metadata(tmp_path / name)["run_id"] == run_id
    assert settings["args"]["prefix_len"] == 10 and settings["args"]["loss_reduction"] == "sentence"
    assert settings["args"]["learning_rate"] == 1e-2 and settings["args"]["epochs"] == 5  # given, and filled in
    assert settings["model"]["n_layer"] == 2 and settings["global_batch"] == 6 and settings["total_iters"] == 24
    assert settings["environment"]["torch"] == torch.__version__ and settings["environment"]["python"]
    losses = val_losses(tmp_path)
    assert len(losses) == 4 and losses[-1] < losses[0]
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["iter"] == 24 and set(state["trained"]) == {"table", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                            "mlp.2.bias"}
    assert (tiny_gpt2 / "model.safetensors").read_bytes() == weights_before
    # what sample.py does: the base model, then the exported prefix on top
    gpt = GPT.from_pretrained(str(tiny_gpt2))
    prefix = load_prefix(tmp_path / "prefix.safetensors", gpt.config)
    assert prefix.prefix_len == 10 and prefix.mlp is None
    logits, _ = gpt(torch.tensor([[464, 3290]]), prefix=prefix(1))
    assert torch.isfinite(logits).all()


def kill_after_first_checkpoint_and_resume(tiny_gpt2, e2e_dir, tmp_path, *extra):
    """An uninterrupted run, and the same run SIGKILLed once a checkpoint exists, then resumed: (reference, resumed)."""
    reference = tmp_path / "uninterrupted"
    result = train(tiny_gpt2, e2e_dir, reference, *extra)
    assert result.returncode == 0, result.stderr
    resumed = tmp_path / "killed"
    command = [sys.executable, "train.py", "--init_from", str(tiny_gpt2), "--data_dir", str(e2e_dir),
               "--out_dir", str(resumed), *FAST, *extra]
    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (resumed / "ckpt.pt").exists() and time.time() < deadline:  # killed after a checkpoint exists
        time.sleep(0.05)
    time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = torch.load(resumed / "ckpt.pt", weights_only=True)
    assert state["iter"] < 24, "the run finished before it could be killed"
    result = train(tiny_gpt2, e2e_dir, resumed, *extra, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming at iteration {state['iter']}" in result.stdout
    assert [json.loads(line)["iter"] for line in open(resumed / "log.jsonl")] == \
        [json.loads(line)["iter"] for line in open(reference / "log.jsonl")]  # one curve, no duplicates
    final, expected = torch.load(resumed / "ckpt.pt", weights_only=True), torch.load(reference / "ckpt.pt",
                                                                                        weights_only=True)
    assert final["iter"] == expected["iter"] == 24 and set(final["trained"]) == set(expected["trained"])
    assert all(torch.equal(final["trained"][k], expected["trained"][k]) for k in expected["trained"])
    return reference, resumed


def test_a_run_killed_at_any_moment_and_resumed_ends_bitwise_equal(tiny_gpt2, e2e_dir, tmp_path):
    reference, resumed = kill_after_first_checkpoint_and_resume(tiny_gpt2, e2e_dir, tmp_path)
    for name in ("prefix.safetensors", "prefix_best.safetensors"):
        ours, theirs = safetensors.load_file(resumed / name), safetensors.load_file(reference / name)
        assert torch.equal(ours["prefix"], theirs["prefix"])


@pytest.mark.slow  # each mode: a run, a run killed in its own process, its resumption (the prefix's is above)
@pytest.mark.parametrize("mode,exports", [
    ("finetune", ["model/model.safetensors", "model_best/model.safetensors"]),
    ("finetune-top", ["tuned.safetensors", "tuned_best.safetensors"]),
    ("adapter", ["tuned.safetensors", "tuned_best.safetensors"]),
    ("lora", ["tuned.safetensors", "tuned_best.safetensors"]),
])
def test_a_baseline_killed_and_resumed_ends_bitwise_equal(tiny_gpt2, e2e_dir, tmp_path, mode, exports):
    reference, resumed = kill_after_first_checkpoint_and_resume(tiny_gpt2, e2e_dir, tmp_path, "--tuning_mode", mode,
                                                                "--adapter_dim", "8")
    for name in exports:
        ours, theirs = safetensors.load_file(resumed / name), safetensors.load_file(reference / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_ctrl_c_saves_and_exits_and_resume_continues(tiny_gpt2, e2e_dir, tmp_path):
    command = [sys.executable, "train.py", "--init_from", str(tiny_gpt2), "--data_dir", str(e2e_dir),
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


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tiny_gpt2, e2e_dir, tmp_path):
    result = train(tiny_gpt2, e2e_dir, tmp_path, "--learning_rate", "1e30", "--eval_interval", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training diverged by iteration" in result.stderr and "is intact" in result.stderr
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["trained"].values())


@pytest.mark.parametrize("flags,message", [
    (["--prefix_len", "0"], "--prefix_len must be a positive integer"),
    (["--prefix_len=-3"], "--prefix_len must be a positive integer"),
    (["--batch_size", "0"], "--batch_size must be a positive integer"),
    (["--prefix_len", "200"], "of the model's 256 positions; shorten it, or pass --skip_long_rows"),
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
    (["--tuning_mode", "lora", "--variant", "infix"], "--tuning_mode lora has none"),
    (["--tuning_mode", "adapter", "--init_text", "table:"], "--tuning_mode adapter has none"),
    (["--tuning_mode", "finetune-top", "--top_blocks", "99"], "--top_blocks 99 exceeds the model's 2 blocks"),
    (["--tuning_mode", "lora", "--lora_rank", "0"], "--lora_rank must be a positive integer"),
    (["--tuning_mode", "sgd"], "invalid choice: 'sgd'"),
    pytest.param(["--train_examples", "42062"], "--train_examples 42062 exceeds the 42,061 training pairs",
                 marks=pytest.mark.full_data),
    (["--train_examples", "0"], "--train_examples must be a positive integer"),
])
def test_bad_input_is_one_sentence_and_a_nonzero_exit(tiny_gpt2, e2e_dir, tmp_path, flags, message):
    result = train(tiny_gpt2, e2e_dir, tmp_path / "run", *flags)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_missing_pretrained_weights_offline(e2e_dir, tmp_path, monkeypatch):
    """gpt2 with no network and nothing cached: the sentence that says how to supply it, nothing else."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("PREFIX_TUNING_CACHE", str(tmp_path / "cache"))
    result = run_main(train_py.main, "--data_dir", e2e_dir, "--out_dir", tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1  # the sentence alone
    assert result.stderr.startswith("error: could not download gpt2 config.json")
    assert "--init_from path/to/gpt2" in result.stderr


def test_resume_refuses_to_change_the_run(tiny_gpt2, e2e_dir, tmp_path):
    assert train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8").returncode == 0
    for change in (["--learning_rate", "5e-3"], ["--grad_accum", "2"], ["--loss_reduction", "token"]):
        result = train(tiny_gpt2, e2e_dir, tmp_path, "--resume", *change)
        assert result.returncode == 2 and "contradicts the run being resumed" in result.stderr


def test_a_new_run_in_an_old_folder_is_refused_and_overwrite_starts_clean(tiny_gpt2, e2e_dir, tmp_path):
    """The sequence that used to mix two runs: a finished P = 10 run, then a P = 5 run in its folder, stopped
    before its first evaluation, left P = 10's prefix_best.safetensors beside P = 5's ckpt.pt."""
    assert train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8").returncode == 0
    old_run = json.loads((tmp_path / "config.json").read_text())["run_id"]
    # an export that another run wrote, beside this run's ckpt.pt, is refused by sample.py
    final = tmp_path / "prefix.safetensors"
    metadata = safetensors.load_metadata(final)
    safetensors.save_file(safetensors.load_file(final), final, {**metadata, "run_id": "20260101-000000-abcdef"})
    stray = run_main(sample.main, "--out_dir", tmp_path, "--start", "name : Aromi")
    assert stray.returncode == 2 and "was not written by the run" in stray.stderr and "Traceback" not in stray.stderr
    (tmp_path / "notes.txt").write_text("mine")  # not a run's file: --overwrite leaves it
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    refused = train(tiny_gpt2, e2e_dir, tmp_path, "--prefix_len", "5")
    assert refused.returncode == 2 and "is not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # nothing touched
    command = [sys.executable, "train.py", "--init_from", str(tiny_gpt2), "--data_dir", str(e2e_dir),
               "--out_dir", str(tmp_path), *FAST, "--prefix_len", "5", "--overwrite"]
    victim = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in victim.stdout:  # the new run has started training: stop it before its first evaluation
        if line.startswith("training "):
            break
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "notes.txt"}  # the old run's files are gone
    assert json.loads((tmp_path / "config.json").read_text())["run_id"] != old_run
    assert run_main(sample.main, "--out_dir", tmp_path, "--start", "name : Aromi").returncode == 2


def test_grad_accum_trains_as_the_whole_batch_in_one_step(tiny_gpt2, e2e_dir, tmp_path):
    """batch 2 x 3 accumulation steps = batch 6 in one step, under the authors' reduction (the sum per text)."""
    runs = {"whole": [], "parts": ["--batch_size", "2", "--grad_accum", "3"], "small": ["--batch_size", "2"]}
    for name, flags in runs.items():
        result = train(tiny_gpt2, e2e_dir, tmp_path / name, "--max_iters", "3", "--eval_interval", "3", *flags)
        assert result.returncode == 0, result.stderr
        if name == "parts":
            assert "global batch 6 = 2 rows x 1 process(es) x 3 accumulation step(s)" in result.stdout
    whole, parts, small = (torch.load(tmp_path / name / "ckpt.pt", weights_only=True)["trained"] for name in runs)
    # Adam divides each step by sqrt(v): float noise in a tiny gradient shows up, but 1/100 of a step (lr 1e-2) at
    # most in each of the 3 steps
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], rtol=0, atol=3e-4)
    assert (small["table"] - whole["table"]).abs().max() > 1e-3  # a batch of 2 alone trains otherwise

def test_a_checkpoint_whose_tensors_do_not_fit_its_settings_is_one_sentence(tiny_gpt2, e2e_dir, tmp_path):
    assert train(tiny_gpt2, e2e_dir, tmp_path).returncode == 0
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["args"]["prefix_len"] = 5  # the settings now describe a prefix its tensors (10 rows) are not
    torch.save(state, tmp_path / "ckpt.pt")
    for export in tmp_path.glob("prefix*.safetensors"):  # so that sample.py reads the checkpoint too
        export.unlink()
    for result in (train(tiny_gpt2, e2e_dir, tmp_path, "--resume"),
                   run_main(sample.main, "--out_dir", tmp_path, "--start", "name : Aromi")):
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "do not fit the method its settings describe" in result.stderr


def test_out_dir_that_is_a_file_is_one_sentence(tiny_gpt2, e2e_dir, tmp_path):
    (tmp_path / "taken").write_text("")
    result = train(tiny_gpt2, e2e_dir, tmp_path / "taken")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is a file, not a directory" in result.stderr


def test_a_new_run_starts_a_new_log_and_resume_survives_a_torn_last_line(tiny_gpt2, e2e_dir, tmp_path):
    assert train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8").returncode == 0
    assert train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8", "--overwrite").returncode == 0  # not resumed
    iters = [json.loads(line)["iter"] for line in open(tmp_path / "log.jsonl")]
    assert iters.count(0) == 1  # one run's curve, not two appended
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"iter": 9, "train_lo')  # a crash in the middle of a line
    result = train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8", "--resume")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["iter"] for line in open(tmp_path / "log.jsonl")] == iters


def test_a_run_trained_in_segments_with_stop_at_ends_bitwise_equal_to_one_run(tiny_gpt2, e2e_dir, tmp_path):
    reference, segmented = tmp_path / "whole", tmp_path / "segments"
    assert train(tiny_gpt2, e2e_dir, reference).returncode == 0
    # 12 is not an evaluation point (every 8): the pause checkpoints by itself
    first = train(tiny_gpt2, e2e_dir, segmented, "--stop_at", "12")
    assert first.returncode == 0, first.stderr
    assert "paused at iteration 12 of 24" in first.stdout and not (segmented / "prefix.safetensors").exists()
    assert torch.load(segmented / "ckpt.pt", weights_only=True)["iter"] == 12
    for stop in ("16", "16", "40"):  # the same stop again pauses at once; past the end, the run finishes
        result = train(tiny_gpt2, e2e_dir, segmented, "--resume", "--stop_at", stop)
        assert result.returncode == 0, result.stderr
    assert [json.loads(line)["iter"] for line in open(segmented / "log.jsonl")] == \
        [json.loads(line)["iter"] for line in open(reference / "log.jsonl")]
    assert val_losses(segmented) == val_losses(reference)  # the learning rate followed the one 24-step schedule
    ours, theirs = (safetensors.load_file(run / "prefix.safetensors") for run in (segmented, reference))
    assert torch.equal(ours["prefix"], theirs["prefix"])


def test_resume_with_another_number_of_processes_is_refused(tiny_gpt2, e2e_dir, tmp_path):
    assert train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8").returncode == 0
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["rng"] = state["rng"] * 2  # as if two processes had trained it
    torch.save(state, tmp_path / "ckpt.pt")
    result = train(tiny_gpt2, e2e_dir, tmp_path, "--max_iters", "8", "--resume")
    assert result.returncode == 2 and "trained by 2 process(es)" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_every_option_with_its_default():
    result = run_main(train_py.main, "--help")
    assert result.returncode == 0
    for flag in ("--init_from", "--dataset", "--data_dir", "--prefix_len", "--mid_dim", "--batch_size",
                 "--learning_rate", "--epochs", "--max_iters", "--eval_interval", "--out_dir", "--device", "--dtype",
                 "--seed", "--resume", "--variant", "--init_text"):
        assert flag in result.stdout
    assert "(default: 10)" in result.stdout and "(default: gpt2)" in result.stdout


@pytest.mark.parametrize("variant", ["embedding-only", "infix"])
def test_ablation_variants_train_end_to_end(tiny_gpt2, e2e_dir, tmp_path, variant):
    result = train(tiny_gpt2, e2e_dir, tmp_path, "--variant", variant, "--max_iters", "16")
    assert result.returncode == 0, result.stderr
    losses = val_losses(tmp_path)
    assert losses[-1] < losses[0]


@pytest.mark.slow  # torchrun and two training processes
def test_ddp_with_two_gloo_processes_ends_with_the_same_prefix(tiny_gpt2, e2e_dir, tmp_path):
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(29500 + os.getpid() % 1000), "train.py", "--init_from",
                             str(tiny_gpt2), "--data_dir", str(e2e_dir), "--out_dir", str(tmp_path),
                             "--device", "cpu", *FAST, "--max_iters", "12"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "all 2 processes hold the same trained weights" in result.stdout
    assert "global batch 12" in result.stdout
    assert val_losses(tmp_path)[-1] < val_losses(tmp_path)[0]


# ---- the baselines' exports, decoded by sample.py ---------------------------------------------------------------

def sample_text(out_dir, *extra):
    result = run_main(sample.main, "--out_dir", out_dir, "--start", "name : Aromi | Type : coffee shop",
                        "--num_beams", "1", "--max_new_tokens", "6", *extra)
    assert result.returncode == 0, result.stderr
    table, text = result.stdout.splitlines()
    assert table == "name : Aromi | Type : coffee shop" and text.startswith("  -> ") and text[5:].strip()
    return text


@torch.no_grad()
def test_fine_tuning_exports_hub_checkpoints_that_transformers_loads(tiny_gpt2, e2e_dir, tmp_path):
    from transformers import GPT2LMHeadModel
    result = train(tiny_gpt2, e2e_dir, tmp_path, "--tuning_mode", "finetune", "--max_iters", "8",
                   "--eval_interval", "4")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt.pt", "log.jsonl", "config.json", "model", "model_best"}
    base = GPT.from_pretrained(str(tiny_gpt2))
    trained = torch.load(tmp_path / "ckpt.pt", weights_only=True)["trained"]
    idx = torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(0))
    for name in ("model", "model_best"):
        assert {p.name for p in (tmp_path / name).iterdir()} == {"config.json", "model.safetensors", "vocab.json",
                                                                "merges.txt"}
        ours = GPT.from_pretrained(str(tmp_path / name))
        assert not torch.equal(ours.transformer.wte.weight, base.transformer.wte.weight)  # it did train
        hf = GPT2LMHeadModel.from_pretrained(str(tmp_path / name)).eval()
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    # the final export is the training state's GPT, tensor for tensor
    final = GPT.from_pretrained(str(tmp_path / "model")).state_dict()
    assert all(torch.equal(final[k.removeprefix("trained.")], v) for k, v in trained.items())


@pytest.mark.parametrize("mode", ["finetune", "finetune-top", "adapter", "lora"])
def test_sample_decodes_each_baseline_from_its_export_and_from_its_checkpoint(tiny_gpt2, e2e_dir, tmp_path, mode):
    import shutil
    from baselines import load_tuned
    run = tmp_path / "run"
    result = train(tiny_gpt2, e2e_dir, run, "--tuning_mode", mode, "--adapter_dim", "8", "--max_iters", "8",
                   "--eval_interval", "4")
    assert result.returncode == 0, result.stderr
    if mode != "finetune":
        assert {p.name for p in run.iterdir()} == {"ckpt.pt", "log.jsonl", "config.json", "tuned.safetensors",
                                                  "tuned_best.safetensors"}
        # the final export holds exactly the training state's tensors
        method = load_tuned(run / "tuned.safetensors", GPT.from_pretrained(str(tiny_gpt2)))
        trained = torch.load(run / "ckpt.pt", weights_only=True)["trained"]
        assert method.state_dict().keys() == trained.keys()
        assert all(torch.equal(method.state_dict()[k], v) for k, v in trained.items())
        assert safetensors.load_metadata(run / "tuned.safetensors")["dataset"] == "e2e"  # sample.py checks it
    best = sample_text(run, "--prefix", "best")
    final = sample_text(run)  # the default, as the authors decode
    only_ckpt = tmp_path / "only-ckpt"  # nothing exported yet: sample.py rebuilds the method from ckpt.pt
    only_ckpt.mkdir()
    shutil.copy(run / "ckpt.pt", only_ckpt / "ckpt.pt")
    assert sample_text(only_ckpt) == final
    assert best  # both exports decode


def test_random_subset_is_reproducible_from_its_seed(tokenizer):
    from data.tokens import Sequences
    pairs = [(f"name : Place {i} | area : riverside", f"Place {i} is by the river, {i % 7} stars.") for i in range(300)]
    data = Sequences.from_pairs(tokenizer, pairs)
    a, again, other = data.random_subset(50, 1), data.random_subset(50, 1), data.random_subset(50, 2)
    assert len(a) == 50 and len(data.random_subset(300, 5)) == 300
    assert (a.tokens == again.tokens).all() and (a.loss_starts == again.loss_starts).all()
    rows = lambda s: [tuple(s[i]) for i in range(len(s))]
    everything = rows(data)
    assert set(rows(a)) <= set(everything) and len(set(rows(a))) == 50  # real rows, drawn without replacement
    assert set(rows(a)) != set(rows(other))
    # each row keeps its own loss start (where its text begins), and batches are built from them
    for i in range(len(a)):
        j = everything.index(tuple(a[i]))
        assert a.loss_starts[i] == data.loss_starts[j]
    idx, targets = a.batch(range(len(a)))
    assert (targets != -100).sum() == sum(len(a[i]) - a.loss_starts[i] for i in range(len(a)))


def test_train_examples_trains_on_exactly_that_many_pairs(tiny_gpt2, e2e_dir, tmp_path, tokenizer):
    from data import tokenized_split
    result = train(tiny_gpt2, e2e_dir, tmp_path, "--train_examples", "37", "--seed", "3", "--max_iters", "4",
                   "--eval_interval", "4")
    assert result.returncode == 0, result.stderr
    subset = tokenized_split("e2e", "train", tokenizer, e2e_dir).random_subset(37, 3)
    assert f"train: {subset.describe()}" in result.stdout  # the subset train.py drew is the seed's
    assert "train: 37 sequences" in result.stdout
    assert "training 4 iterations (7 per epoch" in result.stdout  # ceil(37 / 6) steps make an epoch


# ---- the pieces of the loop, one at a time ----------------------------------------------------------------------

def test_the_authors_objective_sums_each_text_and_averages_over_texts():
    """objective_mode=1 of the authors' code: Σ_tokens −log p per text, then the mean over the batch; on the fast
    CPU loss path (float32) and the plain one (float64) alike."""
    from model.gpt import GPTConfig
    from train import objective
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=300, block_size=32)).eval()
    idx = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(1))
    targets = torch.full((3, 10), -100)
    for row, start in enumerate((2, 5, 7)):  # texts of 8, 5 and 3 tokens
        targets[row, start:] = idx[row, start:].roll(-1)
    for dtype in (torch.float32, torch.float64):
        model = gpt.to(dtype)
        logits, _ = model(idx)
        per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2).double(), targets, reduction="none")
        expected = per_token.sum(1).mean()  # the sum over each text, the mean over texts
        token_mean = model(idx, targets)[1]
        n = int((targets != -100).sum())
        torch.testing.assert_close(objective(token_mean, n, 3, "sentence").double(), expected, rtol=1e-5, atol=0)
        torch.testing.assert_close(objective(token_mean, n, 3, "token").double(), per_token.sum() / n, rtol=1e-5,
                                   atol=0)


def test_init_text_is_read_after_a_space_as_the_authors_do(tokenizer):
    from prefix import init_text_ids
    assert init_text_ids("table-to-text:", tokenizer) == tokenizer.encode_ordinary(" table-to-text:")
    assert tokenizer.encode_ordinary(" table-to-text:") != tokenizer.encode_ordinary("table-to-text:")


def test_the_schedule_gives_each_process_and_micro_batch_its_own_rows_of_the_global_batch():
    from runs import Schedule
    schedule = Schedule(n_examples=50, batch_size=2, world=2, grad_accum=3, epochs=2, max_iters=None,
                        peak_lr=1.0, warmup_iters=0, seed=7)
    assert schedule.global_batch == 12 and schedule.steps_per_epoch == 5 and schedule.total_iters == 10
    for it in range(schedule.total_iters):
        rows = [schedule.rows(it, rank, micro) for micro in range(3) for rank in range(2)]
        assert len(set(np.concatenate(rows).tolist())) == 12  # the global batch's rows, each once
    one_process = Schedule(50, 12, 1, 1, 2, None, 1.0, 0, 7)  # the same global batch from one process
    assert set(np.concatenate([schedule.rows(3, r, m) for m in range(3) for r in range(2)]).tolist()) == \
        set(one_process.rows(3, 0, 0).tolist())


def test_the_progress_rate_leaves_evaluation_pauses_out(monkeypatch):
    import train
    clock = iter([100.0, 110.0, 140.0, 150.0])  # start, a progress line, the end of a 30 s evaluation, a line
    monkeypatch.setattr(train.time, "time", lambda: next(clock))
    meter = train.Meter(0, torch.device("cpu"), world=1)
    meter.tokens = 1000
    assert meter.progress(10, 100)[0] == 100  # 1000 tokens in 10 s
    meter.pause_ends()  # evaluating took 30 s
    meter.tokens = 3000
    rate, eta = meter.progress(20, 100)
    assert rate == 200 and eta == 80  # 2000 tokens in the 10 s since the pause; 1 s per iteration, 80 to go


def test_each_accelerators_generator_is_saved_and_restored(monkeypatch):
    """Dropout on a GPU draws from the GPU's generator: ckpt.pt keeps it, and a CPU-trained run resumed on a GPU
    leaves the GPU's alone (there is none to restore)."""
    from runs import checkpoint
    saved = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device=None: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device=None: restored.append(state))
    cuda = torch.device("cuda", 0)
    state = checkpoint.device_rng_state(cuda)
    assert torch.equal(state["cuda"], saved) and checkpoint.device_rng_state(torch.device("cpu")) == {}
    checkpoint.set_device_rng_state(cuda, {})  # trained on a CPU
    assert restored == []
    checkpoint.set_device_rng_state(cuda, state)
    assert len(restored) == 1 and torch.equal(restored[0], saved)


def test_defaults_are_the_authors_for_each_dataset_and_method():
    from train import parse_args
    e2e, webnlg = parse_args([]), parse_args(["--dataset", "webnlg"])
    assert (e2e.prefix_len, e2e.learning_rate, e2e.batch_size, e2e.epochs) == (10, 8e-5, 10, 5)
    assert (webnlg.prefix_len, webnlg.learning_rate, webnlg.batch_size, webnlg.epochs) == (5, 5e-5, 5, 5)
    assert e2e.loss_reduction == "sentence" and e2e.eval_iters == 0  # objective_mode=1; best chosen on all of dev
    assert parse_args(["--tuning_mode", "finetune"]).loss_reduction == "token"  # their GPT-2's own loss
    assert parse_args(["--loss_reduction", "token"]).loss_reduction == "token"


def test_the_loop_waits_for_the_device_only_where_it_logs_or_evaluates(tiny_gpt2, e2e_dir, tmp_path, monkeypatch):
    """A tensor turned into a Python value makes a GPU wait for its queue. Counted over whole runs that log and
    evaluate only at their end, 2 iterations and 6 make the same number of such conversions: a step makes none."""
    import inspect
    import train
    from model import cpu_kernels

    def conversions(iters: int) -> int:
        calls = []

        def counted(original):
            def conversion(self, *args, **kwargs):
                if inspect.currentframe().f_back.f_code.co_filename != cpu_kernels.__file__:  # never on a GPU
                    calls.append(1)
                return original(self, *args, **kwargs)
            return conversion
        for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        try:
            train.main(["--init_from", str(tiny_gpt2), "--data_dir", str(e2e_dir), "--out_dir",
                        str(tmp_path / str(iters)), "--batch_size", "4", "--max_iters", str(iters), "--log_interval",
                        str(iters), "--eval_interval", str(iters), "--eval_iters", "2", "--overwrite"])
        finally:
            monkeypatch.undo()
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return len(calls)

    conversions(2)  # the data's token cache is built once
    assert conversions(2) == conversions(6)


def test_the_training_loss_needs_no_values_from_the_device():
    """On the meta device, which has shapes but no values, any step that needs a value (a count, boolean-mask
    indexing, an int() of a tensor) raises: the loss, with a prefix, and its backward pass need none there, as on a
    GPU. (On a CPU, where nothing waits, the loss takes the rows with a target alone.)"""
    from model.gpt import GPTConfig
    from prefix import PrefixTuning
    config = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=300, block_size=64)
    gpt, prefix = GPT(config).to("meta"), PrefixTuning(config, 4, mid_dim=16).to("meta")
    idx = torch.zeros(3, 10, dtype=torch.long, device="meta")
    targets = torch.zeros(3, 10, dtype=torch.long, device="meta")
    _, loss = gpt(idx, targets, prefix=prefix(3))
    loss.backward()
    assert loss.shape == () and prefix.table.grad.shape == prefix.table.shape
