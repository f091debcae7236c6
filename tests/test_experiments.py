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


def results_section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}")[1].split("\n## ")[0]


def table_rows(text: str) -> list[list[str]]:
    """The cells of a markdown table's body rows."""
    rows = [line.strip("| ").split(" | ") for line in text.splitlines() if line.startswith("| ")]
    return rows[1:]  # the header (the separator row starts with "|-")


@pytest.mark.slow  # the whole pipeline: small LMs pretrained, every stage's runs trained, decoded and scored
def test_e2e_small_quick_runs_every_stage_then_reuses_every_run(e2e_dir, webnlg_dir, tmp_path):
    from experiments.e2e_small import QUICK
    work, results = tmp_path / "runs", tmp_path / "results"
    coco = shutil.which("java") is not None and importlib.util.find_spec("pycocoevalcap") is not None
    command = ["-m", "experiments.e2e_small", "--quick", "--work_dir", work, "--results_dir", results,
               *data_flags(e2e_dir, webnlg_dir), *([] if coco else ["--no-coco"])]
    result = run_script(*command, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^stage 2 of 5 \(to convergence\), run 1 of \d+: .* \| elapsed \d+m\d\ds, remaining ~",
                     result.stdout, re.M)
    markdown = (results / "results.md").read_text(encoding="utf-8")

    labels = [row[0] for row in table_rows(results_section(markdown, "Main table"))]
    expected = ["prefix-tuning", "fine-tuning", "LoRA", "embedding-only", "infix-tuning", "FT-top2", "adapter 0.1%",
                "adapter 3%"]
    assert len(labels) == len(expected) and all(label.startswith(e) for label, e in zip(labels, expected))
    budgets = {row[0]: row[1] for row in table_rows(results_section(markdown, "Main table"))}
    assert budgets["fine-tuning"].startswith(f"{QUICK.converged_iters} (")  # the table says which budget each had
    assert budgets["FT-top2"].startswith(f"{QUICK.short_iters} (")
    curve_rows = table_rows(results_section(markdown, "BLEU along training"))
    assert [int(row[0]) for row in curve_rows] == [2, 4]  # every evaluation point of the converged protocol
    scale = table_rows(results_section(markdown, "LM scale"))
    assert [row[0] for row in scale] == list(QUICK.lms)
    sizes = [int(row[1].replace(",", "")) for row in scale]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    low_data = table_rows(results_section(markdown, "Low data"))
    assert len(low_data) == 1 and re.fullmatch(r"50( \| [0-9.]+ ± [0-9.]+){3}", " | ".join(low_data[0]))
    sweep = [row[0] for row in table_rows(results_section(markdown, "Prefix vs infix"))]
    assert sweep == ["prefix-tuning (P = 1)", "prefix-tuning (P = 10)", "infix-tuning (P = 10)",
                     "embedding-only (P = 10)"]
    probes = table_rows(results_section(markdown, "Learning rates"))
    assert len(probes) == 3 + 3 + 2 * 2 + 3  # converged, shorter rows, the other LMs, low data
    claims = [line for line in results_section(markdown, "The paper's claims").splitlines() if line.startswith("- ")]
    assert len(claims) == 5 and all(re.search(r": (holds|does not hold)\b.*\d", line) for line in claims)

    summary = json.loads((results / "results.json").read_text())
    runs = summary["runs"]
    by = {(run["lm"], run["name"]): run for run in runs}
    low = [run for run in runs if run["stage"] == "low data"]
    assert len(low) == 3 * QUICK.subsets * len(QUICK.seeds) * len(QUICK.sizes)
    assert len(runs) == 6 + 3 + 2 * 2 + len(low)
    metrics = {"BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"} if coco else {"BLEU", "NIST"}
    for run in runs:
        assert run["lm"] in QUICK.lms and run["learning_rate"] > 0 and run["iterations"] == run["schedule_iters"]
        assert all(len(point) == 4 and np.isfinite(point[1]) for point in run["curve"])
        p = run["parameters"]
        assert 0 < p["trainable"] <= p["gpt"]
        if run["mode"] != "prefix":  # a baseline's export holds exactly what it trained
            assert p["stored"] == p["trainable"]
        if run["stage"] == "converged":  # BLEU on the curve's tables at every evaluation
            assert [point[0] for point in run["curve"]] == [2, 4] and all(np.isfinite(pt[2]) for pt in run["curve"])
        if "texts" in run:  # the main table: every metric
            assert set(run["scores"]) == metrics and all(np.isfinite(v) for v in run["scores"].values())
    for run in low:  # the best evaluation by dev loss is the one decoded
        assert run["kept"] == min(run["curve"], key=lambda point: point[1])[0] and "BLEU" in run["scores"]
    main = QUICK.main_lm
    assert by[main, "prefix"]["parameters"]["stored"] < by[main, "prefix"]["parameters"]["trainable"]
    assert by[main, "finetune"]["parameters"]["trainable"] == by[main, "finetune"]["parameters"]["gpt"]
    assert by[main, "adapter-0.1"]["parameters"]["trainable"] < by[main, "adapter-3"]["parameters"]["trainable"]
    assert set(summary["pretraining"]) == set(QUICK.lms)
    # the low-data subsets are files of exactly that many training rows, each subset its own
    subsets = [(work / "data" / f"e2e-50-{k}" / "trainset.csv").read_text() for k in (1, 2)]
    assert all(text.count("\n") == 1 + 50 for text in subsets) and subsets[0] != subsets[1]
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("bleu_vs_iterations.png", "bleu_vs_lm_size.png", "bleu_vs_examples.png",
                     "bleu_vs_prefix_length.png", "loss_curves.png"):
            assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second call reuses the LMs and every segment of every run: nothing trains or decodes again
    logs = {p: p.stat().st_size for p in work.rglob("*.log")}
    started = time.time()
    again = run_script(*command, timeout=600)
    elapsed = time.time() - started
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_size for p in work.rglob("*.log")} == logs
    second = json.loads((results / "results.json").read_text())
    assert second["pretrain_s_this_call"] == 0
    assert [r["scores"] for r in second["runs"]] == [r["scores"] for r in runs]
    assert second["probes"] == summary["probes"]
    assert elapsed < 60, f"the second call took {elapsed:.0f} s; it should only collect the results"


def fake_probes(monkeypatch, loss_of_rate):
    """rates.choose_rate with each probe's dev loss given by loss_of_rate instead of training; the rates probed."""
    import experiments.rates as rates
    probed = []

    def advance(run, setup, until):
        probed.append(run.rate)
        loss = loss_of_rate(run.rate)
        return {"curve": [[until, loss, None, None]], "diverged": None if np.isfinite(loss) else until}
    monkeypatch.setattr(rates, "advance", advance)
    return probed


def probe_template():
    from experiments.runner import Run
    return Run("prefix", "converged", "prefix-tuning", "lm", "prefix", [], iters=100, eval_every=10)


@pytest.mark.parametrize("best,expected_edge", [(1e-3 * 27, False), (1e-3 / 3, False), (1e-3 * 3 ** 6, True)])
def test_the_rate_grid_widens_until_the_chosen_rate_has_a_worse_candidate_on_both_sides(monkeypatch, best,
                                                                                       expected_edge):
    from experiments.rates import choose_rate
    probed = fake_probes(monkeypatch, lambda rate: np.log(rate / best) ** 2)
    run, record = choose_rate(probe_template(), 1e-3, 20, setup=None)
    assert sorted(probed) == [rate for rate, _ in record["rates"]] and len(probed) == len(set(probed)) <= 6
    assert all(np.isclose(b / a, 3) for a, b in zip(sorted(probed), sorted(probed)[1:]))  # a grid x3 apart
    chosen = min(record["rates"], key=lambda pair: pair[1])[0]
    assert record["chosen"] == chosen == run.rate and record["at_edge"] is expected_edge and record["until"] == 20
    if not expected_edge:
        assert np.isclose(chosen, best) and min(probed) < chosen < max(probed)
    else:  # three widenings at most: from 3^1 to 3^4, short of 3^6
        assert np.isclose(chosen, 1e-3 * 3 ** 4) and len(probed) == 6


def test_a_rate_that_diverges_is_worse_than_any_other(monkeypatch):
    from experiments.rates import choose_rate
    probe = fake_probes(monkeypatch, lambda rate: np.inf if rate > 2e-3 else -np.log(rate))
    run, record = choose_rate(probe_template(), 1e-3, 20, setup=None)
    assert np.isclose(run.rate, 1e-3) and not record["at_edge"] and len(probe) == 3


def test_early_stopping_waits_for_half_the_schedule_and_a_clear_plateau():
    from experiments.runner import stopped_improving
    run = probe_template()  # 100 iterations, evaluated every 10
    falling = [[10 * (i + 1), 2.0 - 0.01 * i] for i in range(8)]
    flat = [[10 * (i + 1), 2.0 if i < 4 else 1.999] for i in range(8)]  # 0.05% better: not clearly
    assert not stopped_improving(falling, run)
    assert stopped_improving(flat, run)
    assert not stopped_improving(flat[:4], run)  # before half the schedule, never
    rising_then_better = flat[:7] + [[80, 1.9]]
    assert not stopped_improving(rising_then_better, run)


def test_a_training_subset_is_a_folder_that_reads_like_the_release(e2e_dir, tmp_path):
    from data import load_examples
    from experiments.subsets import training_subset
    first = training_subset(e2e_dir, 30, 1, tmp_path / "one")
    again = training_subset(e2e_dir, 30, 1, tmp_path / "again")
    other = training_subset(e2e_dir, 30, 2, tmp_path / "two")
    train = load_examples("e2e", "train", first)
    assert sum(len(ex.references) for ex in train) == 30  # 30 (table, text) pairs
    full = {(ex.table, ref) for ex in load_examples("e2e", "train", e2e_dir) for ref in ex.references}
    assert {(ex.table, ref) for ex in train for ref in ex.references} <= full
    assert (first / "trainset.csv").read_text() == (again / "trainset.csv").read_text()  # the number decides
    assert (first / "trainset.csv").read_text() != (other / "trainset.csv").read_text()
    for split in ("dev", "test"):
        assert load_examples("e2e", split, first) == load_examples("e2e", split, e2e_dir)


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
