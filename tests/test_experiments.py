"""experiments/: the small LM's pretraining (its corpus never shows an E2E table) and the E2E miniature end to end."""
import importlib.util
import json
import re
import shutil
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, run_main, run_script
from experiments import pretrain_small
from markdown import section
from model import GPT

E2E_KEYS = "name|Type|food|price|customer rating|family friendly|area|near"
E2E_TABLE = re.compile(rf"\b({E2E_KEYS}) : [^|]+ \| ({E2E_KEYS}) : ")  # "name : X | Type : Y": two E2E fields in a row


def data_flags(e2e_dir, webnlg_dir):
    return ["--e2e_dir", e2e_dir, "--webnlg_dir", webnlg_dir]


@pytest.fixture(scope="module")
def pretrained(e2e_dir, webnlg_dir, tmp_path_factory):
    """experiments.pretrain_small --quick, run once: (its --out_dir, what it printed)."""
    out = tmp_path_factory.mktemp("pretrain") / "small"
    result = run_main(pretrain_small.main, "--quick", "--out_dir", out, *data_flags(e2e_dir, webnlg_dir))
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_pretrain_small_quick_writes_a_checkpoint_transformers_loads_and_resumes(pretrained, e2e_dir, webnlg_dir):
    from transformers import GPT2LMHeadModel
    out, stdout = pretrained
    assert "resuming" not in stdout
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    ours = GPT.from_pretrained(str(out))
    theirs = GPT2LMHeadModel.from_pretrained(str(out)).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], theirs(idx).logits, atol=1e-4, rtol=0)
    summary = json.loads((out.parent / "small.json").read_text())
    history = summary["history"]
    assert [r["iter"] for r in history] == [2, 4]  # --quick: 4 iterations, evaluated every 2
    for record in history:
        assert np.isfinite(record["val_loss"]) and record["val_loss"] > 0
        assert 0 <= record["copy_accuracy"] <= 1
    assert (out.parent / "small.state" / "ckpt.pt").exists()
    # a second call continues the saved run rather than starting over, and writes the same model
    weights = (out / "model.safetensors").read_bytes()
    again = run_main(pretrain_small.main, "--quick", "--out_dir", out, *data_flags(e2e_dir, webnlg_dir))
    assert again.returncode == 0, again.stderr
    assert "resuming at iteration 4" in again.stdout
    assert (out / "model.safetensors").read_bytes() == weights


def test_pretrain_small_refuses_to_resume_with_other_settings(pretrained, e2e_dir, webnlg_dir):
    result = run_main(pretrain_small.main, "--quick", "--out_dir", pretrained[0], "--seed", "5",
                      *data_flags(e2e_dir, webnlg_dir))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "other settings" in result.stderr


@pytest.fixture(scope="module")
def small_corpus(e2e_dir, webnlg_dir, tokenizer):
    from experiments.pretrain_small import build_corpus
    return build_corpus(tokenizer, e2e_dir, webnlg_dir, seed=0, limit=300)


def test_copy_probe_rows_are_a_span_followed_by_itself(small_corpus):
    probe = small_corpus["copy_probe"]
    assert probe.shape == (256, 32)
    assert (probe[:, :16] == probe[:, 16:]).all()
    assert len({tuple(row) for row in probe}) > 200  # spans from all over the held-out text, not one


def test_the_pretraining_corpus_never_shows_an_e2e_table(small_corpus, e2e_dir, tokenizer):
    from data import load_examples
    train = tokenizer.decode(small_corpus["train"].tolist())
    examples = load_examples("e2e", "train", e2e_dir)
    assert examples[0].references[0] in train  # E2E's texts are there (the check below can fail) ...
    assert E2E_TABLE.search(" | ".join(ex.table for ex in examples[:3]))  # ... and the pattern finds a table
    assert not E2E_TABLE.search(train)  # but no table
    assert not any(ex.table in train for ex in examples[:300])
    assert not re.search(r"\bname : ", train) and " | Type : " not in train  # WebNLG's "nickname : " may be there
    # WebNLG's data-to-text rows are there, in another format: "subject : predicate : object"
    assert re.search(r"\S+ : \S+ : ", train)


@pytest.mark.slow  # the whole pipeline: a small LM pretrained, 11 runs trained, decoded and scored (~40 s)
def test_e2e_small_quick_runs_every_method_then_reuses_every_run(e2e_dir, webnlg_dir, tmp_path):
    work, results = tmp_path / "runs", tmp_path / "results"
    coco = shutil.which("java") is not None and importlib.util.find_spec("pycocoevalcap") is not None
    command = ["-m", "experiments.e2e_small", "--quick", "--work_dir", work, "--results_dir", results,
               *data_flags(e2e_dir, webnlg_dir), *([] if coco else ["--no-coco"])]
    result = run_script(*command, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (results / "results.md").read_text(encoding="utf-8")
    main_rows = [line for line in markdown.split("## Main table")[1].split("##")[0].splitlines()
                 if line.startswith("| ") and not line.startswith("| method")]
    labels = [row.split(" | ")[0].removeprefix("| ") for row in main_rows]
    expected = ["prefix-tuning", "embedding-only", "infix-tuning", "fine-tuning", "FT-top2", "adapter 0.1%",
                "adapter 3%", "LoRA"]
    assert len(labels) == len(expected) and all(label.startswith(e) for label, e in zip(labels, expected))
    low_data = markdown.split("## Low data")[1].split("##")[0]
    assert re.search(r"^\| 50 \| [0-9.]+ \| [0-9.]+ \| ", low_data, re.M)
    lengths = markdown.split("## Prefix length")[1].split("##")[0]
    assert re.search(r"^\| 1 \| ", lengths, re.M) and re.search(r"^\| 10 \| ", lengths, re.M)

    summary = json.loads((results / "results.json").read_text())
    metrics = {"BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"} if coco else {"BLEU", "NIST"}
    runs = summary["runs"]
    assert len(runs) == 8 + 1 + 2  # main table, P = 1 (P = 10 is the main run), low data: 50 pairs x 1 seed x 2
    for run in runs:
        assert set(run["scores"]) == metrics and all(np.isfinite(v) for v in run["scores"].values())
        assert 0 < run["trainable"] <= run["gpt_parameters"]
        if run["mode"] != "prefix":  # a baseline's export holds exactly what it trained
            assert run["stored"] == run["trainable"]
    by_name = {run["name"]: run for run in runs}
    assert by_name["prefix"]["stored"] < by_name["prefix"]["trainable"]  # the MLP is dropped
    assert by_name["finetune"]["trainable"] == by_name["finetune"]["gpt_parameters"]
    adapters = [by_name[n]["trainable"] / by_name[n]["gpt_parameters"] for n in ("adapter-0.1", "adapter-3")]
    assert adapters[0] < adapters[1]
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("bleu_vs_examples.png", "bleu_vs_prefix_length.png", "loss_curves.png"):
            assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second call reuses the small LM and every run: nothing trains again
    logs = {p: p.stat().st_size for p in work.rglob("*.log")}
    started = time.time()
    again = run_script(*command, timeout=600)
    elapsed = time.time() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_size for p in work.rglob("*.log")} == logs
    second = json.loads((results / "results.json").read_text())
    assert second["pretrain_s_this_call"] == 0
    assert [r["scores"] for r in second["runs"]] == [r["scores"] for r in runs]
    assert elapsed < 60, f"the second call took {elapsed:.0f} s; it should only collect the results"


def test_readme_and_docs_show_the_committed_run_of_the_miniature():
    """The committed results' main table is in README's miniature section as it is, its low-data and prefix-length
    tables in docs/miniature.md's sections."""
    markdown = (ROOT / "experiments" / "results" / "results.md").read_text(encoding="utf-8")
    tables = [part.split("\n## ")[0] for part in markdown.split("\n## ")[1:4]]
    assert [t.splitlines()[0] for t in tables] == ["Main table", "Low data (mean ± half the range over seeds 1, 2)",
                                                   "Prefix length"]
    shown = [section("README.md", "It learns: the paper's comparisons in miniature"),
             section("docs/miniature.md", "Low data"), section("docs/miniature.md", "Prefix length")]
    rows = [[line for line in table.splitlines() if line.startswith("| ") and "---" not in line] for table in tables]
    assert [len(table) for table in rows] == [1 + 8, 1 + 4, 1 + 4]
    assert [[row for row in table if row not in page] for table, page in zip(rows, shown)] == [[], [], []]
