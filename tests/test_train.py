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
    assert state["iter"] == 24 and set(state["trained"]) == {"table", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight",
                                                            "mlp.2.bias"}
    assert (tiny_gpt2 / "model.safetensors").read_bytes() == weights_before
    # what sample.py does: the base model, then the exported prefix on top
    gpt = GPT.from_pretrained(str(tiny_gpt2))
    prefix = load_prefix(tmp_path / "prefix.safetensors", gpt.config)
    assert prefix.prefix_len == 10 and prefix.mlp is None
    logits, _ = gpt(torch.tensor([[464, 3290]]), prefix=prefix(1))
    assert torch.isfinite(logits).all()


def kill_after_first_checkpoint_and_resume(tiny_gpt2, shared, tmp_path, *extra):
    """An uninterrupted run, and the same run SIGKILLed once a checkpoint exists, then resumed: (reference, resumed)."""
    reference = tmp_path / "uninterrupted"
    result = train(tiny_gpt2, shared, reference, *extra)
    assert result.returncode == 0, result.stderr
    resumed = tmp_path / "killed"
    command = [sys.executable, "train.py", "--init_from", str(tiny_gpt2), "--data_dir", str(shared / "data" / "e2e"),
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
    result = subprocess.run(command + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming at iteration {state['iter']}" in result.stdout
    assert [json.loads(line)["iter"] for line in open(resumed / "log.jsonl")] == \
        [json.loads(line)["iter"] for line in open(reference / "log.jsonl")]  # one curve, no duplicates
    final, expected = torch.load(resumed / "ckpt.pt", weights_only=True), torch.load(reference / "ckpt.pt",
                                                                                        weights_only=True)
    assert final["iter"] == expected["iter"] == 24 and set(final["trained"]) == set(expected["trained"])
    assert all(torch.equal(final["trained"][k], expected["trained"][k]) for k in expected["trained"])
    return reference, resumed


def test_a_run_killed_at_any_moment_and_resumed_ends_bitwise_equal(tiny_gpt2, shared, tmp_path):
    reference, resumed = kill_after_first_checkpoint_and_resume(tiny_gpt2, shared, tmp_path)
    for name in ("prefix.safetensors", "prefix_best.safetensors"):
        ours, theirs = safetensors.load_file(resumed / name), safetensors.load_file(reference / name)
        assert torch.equal(ours["prefix"], theirs["prefix"])


@pytest.mark.parametrize("mode,exports", [
    ("finetune", ["model/model.safetensors", "model_best/model.safetensors"]),
    ("finetune-top", ["tuned.safetensors", "tuned_best.safetensors"]),
    ("adapter", ["tuned.safetensors", "tuned_best.safetensors"]),
    ("lora", ["tuned.safetensors", "tuned_best.safetensors"]),
])
def test_a_baseline_killed_and_resumed_ends_bitwise_equal(tiny_gpt2, shared, tmp_path, mode, exports):
    reference, resumed = kill_after_first_checkpoint_and_resume(tiny_gpt2, shared, tmp_path, "--tuning_mode", mode,
                                                                "--adapter_dim", "8")
    for name in exports:
        ours, theirs = safetensors.load_file(resumed / name), safetensors.load_file(reference / name)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


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
    assert all(torch.isfinite(t).all() for t in state["trained"].values())


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
    (["--tuning_mode", "lora", "--variant", "infix"], "--tuning_mode lora has none"),
    (["--tuning_mode", "adapter", "--init_text", "table:"], "--tuning_mode adapter has none"),
    (["--tuning_mode", "finetune-top", "--top_blocks", "99"], "--top_blocks 99 exceeds the model's 2 blocks"),
    (["--tuning_mode", "lora", "--lora_rank", "0"], "--lora_rank must be a positive integer"),
    (["--tuning_mode", "sgd"], "invalid choice: 'sgd'"),
    (["--train_examples", "42062"], "--train_examples 42062 exceeds the 42,061 training pairs"),
    (["--train_examples", "0"], "--train_examples must be a positive integer"),
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


def test_a_checkpoint_whose_tensors_do_not_fit_its_settings_is_one_sentence(tiny_gpt2, shared, tmp_path):
    assert train(tiny_gpt2, shared, tmp_path).returncode == 0
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["args"]["prefix_len"] = 5  # the settings now describe a prefix its tensors (10 rows) are not
    torch.save(state, tmp_path / "ckpt.pt")
    for export in tmp_path.glob("prefix*.safetensors"):  # so that sample.py reads the checkpoint too
        export.unlink()
    for result in (train(tiny_gpt2, shared, tmp_path, "--resume"),
                   run_script("sample.py", "--out_dir", tmp_path, "--start", "name : Aromi")):
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "do not fit the method its settings describe" in result.stderr


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
    assert "all 2 processes hold the same trained weights" in result.stdout
    assert "global batch 12" in result.stdout
    assert val_losses(tmp_path)[-1] < val_losses(tmp_path)[0]


# ---- the baselines' exports, decoded by sample.py ---------------------------------------------------------------

def sample_text(out_dir, *extra):
    result = run_script("sample.py", "--out_dir", out_dir, "--start", "name : Aromi | Type : coffee shop",
                        "--num_beams", "1", "--max_new_tokens", "6", *extra, timeout=120)
    assert result.returncode == 0, result.stderr
    table, text = result.stdout.splitlines()
    assert table == "name : Aromi | Type : coffee shop" and text.startswith("  -> ") and text[5:].strip()
    return text


@torch.no_grad()
def test_fine_tuning_exports_hub_checkpoints_that_transformers_loads(tiny_gpt2, shared, tmp_path):
    from transformers import GPT2LMHeadModel
    result = train(tiny_gpt2, shared, tmp_path, "--tuning_mode", "finetune", "--max_iters", "8", "--eval_interval", "4")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"ckpt.pt", "log.jsonl", "model", "model_best"}
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
def test_sample_decodes_each_baseline_from_its_export_and_from_its_checkpoint(tiny_gpt2, shared, tmp_path, mode):
    import shutil
    from baselines import load_tuned
    run = tmp_path / "run"
    result = train(tiny_gpt2, shared, run, "--tuning_mode", mode, "--adapter_dim", "8", "--max_iters", "8",
                   "--eval_interval", "4")
    assert result.returncode == 0, result.stderr
    if mode != "finetune":
        assert {p.name for p in run.iterdir()} == {"ckpt.pt", "log.jsonl", "tuned.safetensors",
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


def test_train_examples_trains_on_exactly_that_many_pairs(tiny_gpt2, shared, tmp_path, tokenizer):
    from data import tokenized_split
    result = train(tiny_gpt2, shared, tmp_path, "--train_examples", "37", "--seed", "3", "--max_iters", "4",
                   "--eval_interval", "4")
    assert result.returncode == 0, result.stderr
    subset = tokenized_split("e2e", "train", tokenizer, shared / "data" / "e2e").random_subset(37, 3)
    assert f"train: {subset.describe()}" in result.stdout  # the subset train.py drew is the seed's
    assert "train: 37 sequences" in result.stdout
    assert "training 4 iterations (7 per epoch" in result.stdout  # ceil(37 / 6) steps make an epoch
