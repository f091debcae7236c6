"""The paper's E2E comparisons in miniature, in one command on a CPU, with a small GPT-2 pretrained here.

    python -m experiments.e2e_small            # the small LM (built once), every method, the tables and figures
    python -m experiments.e2e_small --quick    # the same pipeline on tiny settings, for the tests

Every method trains through train.py and decodes through sample.py (beam 5, as the paper), with the flags a user
would give them; this script only chooses the flags, times the runs and collects the scores:
  - main table: prefix-tuning, its ablations (embedding-only, infix), fine-tuning, FT-top2, adapters at the
    paper's two budgets (0.1% and 3% of the GPT), LoRA (~0.1%), all on the full E2E training set;
  - low-data (the paper's §6.3): prefix-tuning vs fine-tuning on 50, 100, 200, 500 training pairs, several seeds;
  - prefix length (§7.1): prefix-tuning with 1, 5, 10, 20 positions.
Each method's learning rate is chosen first, by dev loss after a short run at each of three rates.
Runs already finished in --work_dir are reused, so an interrupted experiment continues where it stopped.
The numbers belong to a 6-layer, 128-wide GPT-2 trained for half an hour on this machine, not to the paper's
GPT-2 medium: they show what each method does with a weak LM, not what it does with a strong one.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sample
import train
from baselines import adapter_dim_for_share
from baselines.common import trainable_parameters
from common import UserError, atomic_path, exit_on_user_error
from common.cli import ArgumentParser
from common.figures import pyplot, save_png
from data import load_examples
from experiments import pretrain_small
from metrics import coco_scores, e2e_scores
from model import GPT
from model.loading import read_config
from runs import find_trained
from runs.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Budget:
    pretrain: tuple[str, ...]  # pretrain_small.py flags
    main_iters: int            # training iterations of the full-data runs
    low_data_iters: int        # ... and of the low-data runs
    eval_interval: int
    eval_iters: int            # validation batches per evaluation
    probe_iters: int           # iterations of the learning-rate probe runs
    probe_rates: dict[str, tuple[float, ...]]  # the candidate peak learning rates of each method
    test_tables: int           # E2E test tables decoded and scored per run of the main table (630: all of them)
    sweep_tables: int          # ... per run of the low-data and prefix-length sweeps (the first ones)
    sizes: tuple[int, ...]     # low-data training pairs
    seeds: tuple[int, ...]     # low-data seeds (subset and initialization)
    lengths: tuple[int, ...]   # the prefix-length sweep
    max_new_tokens: int = 60


# The paper's rates (8e-5 for 5 epochs of GPT-2 medium) are far too small for a few thousand steps of a small LM,
# so each method's peak rate is chosen from these by dev loss after Budget.probe_iters iterations (the probe runs).
PROBE_RATES = {"prefix": (5e-4, 2e-3, 8e-3), "finetune": (1e-4, 4e-4, 1.6e-3), "finetune-top": (1e-4, 4e-4, 1.6e-3),
               "adapter": (5e-4, 2e-3, 8e-3), "lora": (5e-4, 2e-3, 8e-3)}
FULL = Budget(pretrain=(), main_iters=1500, low_data_iters=300, eval_interval=250, eval_iters=20, probe_iters=200,
              probe_rates=PROBE_RATES, test_tables=630, sweep_tables=100,
              sizes=(50, 100, 200, 500), seeds=(1, 2), lengths=(1, 5, 10, 20))
QUICK = Budget(pretrain=("--quick",), main_iters=4, low_data_iters=2, eval_interval=2, eval_iters=1, probe_iters=2,
               probe_rates={mode: rates[-1:] for mode, rates in PROBE_RATES.items()}, test_tables=2, sweep_tables=2,
               sizes=(50,), seeds=(1,), lengths=(1, 10), max_new_tokens=4)


@dataclass
class Run:
    name: str                # its folder under --work_dir
    group: str               # probe | main | low-data | length
    label: str               # its row in the tables
    flags: list[str]         # train.py flags beyond the shared ones
    mode: str = "prefix"     # --tuning_mode
    result: dict = field(default_factory=dict)


def probes(budget: Budget) -> list[Run]:
    """Short runs, one per method and candidate learning rate: the rate with the lowest dev loss is used."""
    return [Run(f"probe-{mode}-{rate:g}", "probe", f"{mode} at {rate:g}", ["--learning_rate", f"{rate:g}"], mode)
            for mode, rates in budget.probe_rates.items() for rate in rates]


def chosen_rates(probe_runs: list[Run]) -> dict[str, str]:
    """For each method, the probed learning rate whose run ended with the lowest validation loss."""
    best = {}
    for run in probe_runs:
        loss = run.result["val_curve"][-1][1]
        if run.mode not in best or loss < best[run.mode][0]:
            best[run.mode] = (loss, run.flags[run.flags.index("--learning_rate") + 1])
    return {mode: rate for mode, (_, rate) in best.items()}


def plan(budget: Budget, small_lm: Path, rates: dict[str, str]) -> list[Run]:
    """Every run of the experiment, main table first, each at its method's chosen learning rate."""
    config = read_config(small_lm)
    n_params = gpt_parameters(small_lm)
    dims = {share: adapter_dim_for_share(config, share, n_params) for share in (0.001, 0.03)}
    runs = [Run("prefix", "main", "prefix-tuning (P = 10)", ["--prefix_len", "10"]),
            Run("embedding-only", "main", "embedding-only (P = 10)", ["--prefix_len", "10", "--variant",
                                                                      "embedding-only"]),
            Run("infix", "main", "infix-tuning (P = 10)", ["--prefix_len", "10", "--variant", "infix"]),
            Run("finetune", "main", "fine-tuning", [], "finetune"),
            Run("finetune-top2", "main", "FT-top2", ["--top_blocks", "2"], "finetune-top"),
            Run("adapter-0.1", "main", f"adapter 0.1% (bottleneck {dims[0.001]})", ["--adapter_dim",
                                                                                    str(dims[0.001])], "adapter"),
            Run("adapter-3", "main", f"adapter 3% (bottleneck {dims[0.03]})", ["--adapter_dim", str(dims[0.03])],
                "adapter"),
            Run("lora", "main", "LoRA (rank 4)", ["--lora_rank", "4", "--lora_alpha", "8"], "lora")]
    runs += [Run(f"length-{n}", "length", f"prefix-tuning, P = {n}", ["--prefix_len", str(n)])
             for n in budget.lengths if n != 10]
    # a low-data run trains for its iterations, however many epochs they make (the authors' --max_steps 400)
    runs += [Run(f"lowdata-{mode}-{size}-seed{seed}", "low-data", f"{mode} {size}",
                 ["--train_examples", str(size), "--seed", str(seed), "--epochs", "1000"], mode)
             for size in budget.sizes for seed in budget.seeds for mode in ("prefix", "finetune")]
    for run in runs:
        run.flags += ["--learning_rate", rates[run.mode]]
    return runs


def gpt_parameters(directory: Path) -> int:
    return sum(p.numel() for p in GPT.from_pretrained(str(directory)).parameters())


def parameter_counts(out: Path, small_lm: Path) -> dict[str, int]:
    """Numbers the method trains and numbers its export stores, built from the settings of the run in `out`."""
    gpt = GPT.from_pretrained(str(small_lm))
    total = sum(p.numel() for p in gpt.parameters())
    method = build_method(find_trained(out, "final").settings, gpt)
    return {"trainable": trainable_parameters(method), "stored": method.stored_parameters(), "gpt_parameters": total}


def validation_curve(log: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return [(r["iter"], r["val_loss"]) for r in records if "val_loss" in r]


def run_script(script, argv: list[str], log: Path) -> float:
    """Run train.py's or sample.py's main() with these flags, as a user would, in this process (no interpreter to
    start each time); its output goes to `log`. Returns the seconds it took."""
    started = time.time()
    handler = signal.getsignal(signal.SIGINT)  # train.py installs its own Ctrl-C handler
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            script.main(argv)
        except SystemExit as e:  # a user error: one sentence in the log
            if e.code:
                raise RuntimeError(f"{script.__name__} {' '.join(argv)} failed; see {log}") from None
        finally:
            signal.signal(signal.SIGINT, handler)
    return time.time() - started


def train_and_score(run: Run, budget: Budget, small_lm: Path, e2e_dir: Path, work: Path, references, coco: bool,
                    announce: bool = False):
    """Train, decode the test tables with beam 5, score: the run's result.json (reused when it exists)."""
    out = work / run.name
    if (out / "result.json").exists():
        run.result = json.loads((out / "result.json").read_text())
    else:
        _train_and_score(run, budget, small_lm, e2e_dir, out, references, coco)
    if announce:
        r = run.result
        bleu = f"BLEU {r['scores']['BLEU']:.1f}, " if r["scores"] else ""
        print(f"{run.name}: {bleu}dev loss {r['val_curve'][-1][1]:.3f} ({format_seconds(r['train_s'])} training)",
              flush=True)


def _train_and_score(run: Run, budget: Budget, small_lm: Path, e2e_dir: Path, out: Path, references, coco: bool):
    out.mkdir(parents=True, exist_ok=True)
    iters = {"low-data": budget.low_data_iters, "probe": budget.probe_iters}.get(run.group, budget.main_iters)
    flags = ["--init_from", str(small_lm), "--data_dir", str(e2e_dir), "--out_dir", str(out),
             "--tuning_mode", run.mode, "--max_iters", str(iters),
             "--eval_interval", str(min(budget.eval_interval, iters)), "--eval_iters", str(budget.eval_iters),
             "--log_interval", str(max(1, budget.eval_interval // 5)), *run.flags]
    flags.append("--resume" if (out / "ckpt.pt").exists() else "--overwrite")  # the folder holds train.log already
    train_s = run_script(train, flags, out / "train.log")
    texts, scores, decode_s = [], {}, 0.0
    if run.group != "probe":  # a probe only needs its dev loss
        texts_path = out / "test.txt"
        tables = budget.test_tables if run.group == "main" else budget.sweep_tables
        decode_s = run_script(sample, ["--out_dir", str(out), "--split", "test", "--data_dir", str(e2e_dir),
                                       # as the authors: the final prefix, but in low-data runs the best evaluation's
                                       "--prefix", "best" if run.group == "low-data" else "final",
                                       "--max_examples", str(tables), "--max_new_tokens", str(budget.max_new_tokens),
                                       "--output", str(texts_path), "--no-coco"], out / "sample.log")
        texts = texts_path.read_text(encoding="utf-8").splitlines()
        refs = references[:len(texts)]
        scores = e2e_scores(texts, refs, coco=False) | (coco_scores(texts, refs) if coco else {})
    run.result = {"name": run.name, "label": run.label, "group": run.group, "mode": run.mode, "flags": run.flags,
                  "train_s": train_s, "decode_s": decode_s, "scores": scores, "texts": texts,
                  **parameter_counts(out, small_lm), "val_curve": validation_curve(out / "log.jsonl")}
    with atomic_path(out / "result.json") as tmp:
        tmp.write_text(json.dumps(run.result, indent=1))


def score_as_a_sweep(run: Run, budget: Budget, work: Path, references, coco: bool) -> None:
    """The main prefix run is also the sweep's P = 10: score it on the sweeps' tables too, so the sweep compares
    like with like."""
    if "sweep_scores" not in run.result:
        texts = run.result["texts"][:budget.sweep_tables]
        refs = references[:len(texts)]
        run.result["sweep_scores"] = e2e_scores(texts, refs, coco=False) | (coco_scores(texts, refs) if coco else {})
        with atomic_path(work / run.name / "result.json") as tmp:
            tmp.write_text(json.dumps(run.result, indent=1))


def pretrain(budget: Budget, small_lm: Path, e2e_dir: Path, webnlg_dir: Path, log: Path) -> float:
    """Build the small GPT-2 unless it is there; the seconds it took (0 when reused)."""
    if (small_lm / "model.safetensors").exists():
        return 0.0
    small_lm.parent.mkdir(parents=True, exist_ok=True)
    print(f"pretraining the small GPT-2 into {small_lm} (log: {log})", flush=True)
    return run_script(pretrain_small, ["--out_dir", str(small_lm), "--e2e_dir", str(e2e_dir),
                                       "--webnlg_dir", str(webnlg_dir), *budget.pretrain], log)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: the whole pipeline in under a minute")
    p.add_argument("--work_dir", default=str(ROOT / "experiments" / "runs"),
                   help="the small LM and every run's folder (reused when found)")
    p.add_argument("--results_dir", default=str(ROOT / "experiments" / "results"),
                   help="where results.md, results.json and the figures go")
    p.add_argument("--e2e_dir", default=str(SHARED / "e2e"), help="the E2E release (zip or CSVs)")
    p.add_argument("--webnlg_dir", default=str(SHARED / "webnlg"), help="the WebNLG 2017 XML (pretraining text)")
    p.add_argument("--coco", action=argparse.BooleanOptionalAction, default=True,
                   help="METEOR, ROUGE-L and CIDEr too (pycocoevalcap and Java)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    work, results_dir = Path(args.work_dir), Path(args.results_dir)
    e2e_dir, webnlg_dir = Path(args.e2e_dir), Path(args.webnlg_dir)
    if not e2e_dir.exists() or not webnlg_dir.exists():
        raise UserError(f"the experiment needs the E2E release ({e2e_dir}) and WebNLG 2017 ({webnlg_dir}); "
                        f"pass --e2e_dir and --webnlg_dir")
    small_lm = work / "small-gpt2"
    started = time.time()
    pretrain_s = pretrain(budget, small_lm, e2e_dir, webnlg_dir, work / "pretrain.log")
    references = [ex.references for ex in load_examples("e2e", "test", e2e_dir)]
    tables = [ex.table for ex in load_examples("e2e", "test", e2e_dir)]
    probe_runs = probes(budget)
    for run in probe_runs:
        train_and_score(run, budget, small_lm, e2e_dir, work, references, False, announce=True)
    rates = chosen_rates(probe_runs)
    print("learning rates: " + ", ".join(f"{mode} {rate}" for mode, rate in rates.items()), flush=True)
    runs = plan(budget, small_lm, rates)
    for run in runs:
        train_and_score(run, budget, small_lm, e2e_dir, work, references, args.coco, announce=True)
    score_as_a_sweep(next(run for run in runs if run.name == "prefix"), budget, work, references, args.coco)
    pretraining = json.loads((small_lm.parent / (small_lm.name + ".json")).read_text())
    summary = {"budget": asdict(budget), "pretraining": pretraining,
               "pretrain_s_this_call": pretrain_s, "total_s_this_call": time.time() - started,
               "learning_rates": rates, "probes": [run.result for run in probe_runs],
               "runs": [run.result for run in runs]}
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(results_dir / "results.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    with atomic_path(results_dir / "results.md") as tmp:
        tmp.write_text(report(runs, probe_runs, rates, budget, pretraining, tables), encoding="utf-8")
    figures(runs, budget, results_dir)
    print(f"done in {format_seconds(time.time() - started)}: {results_dir / 'results.md'}")


METRICS = (("BLEU", 1), ("NIST", 2), ("METEOR", 1), ("ROUGE-L", 1), ("CIDEr", 2))


def report(runs: list[Run], probe_runs: list[Run], rates: dict[str, str], budget: Budget, pretraining: dict,
           tables: list[str]) -> str:
    """results.md: the three tables and a few outputs beside their tables."""
    last = pretraining["history"][-1]
    s = pretraining["settings"]
    lines = [
        "# E2E in miniature: a small GPT-2 pretrained on this machine, not the paper's GPT-2 medium", "",
        f"Small LM: {s['n_layer']} layers, width {s['n_embd']}, {s['n_head']} heads, pretrained "
        f"{last['iter']} iterations of {s['batch_size']} × {s['seq_len']} tokens (experiments/pretrain_small.py); "
        f"held-out loss {last['val_loss']:.2f} on E2E dev references, copy accuracy {last['copy_accuracy']:.2f} on "
        f"held-out repeated spans. Full-data runs: {budget.main_iters} iterations of batch 10 (a "
        f"{budget.main_iters * 10 / 42061:.2f} epoch of E2E train); low-data runs: {budget.low_data_iters} "
        f"iterations. Decoding: beam 5; the main table is scored on {budget.test_tables} E2E test tables, the "
        f"sweeps on the first {budget.sweep_tables}. All {len(probe_runs) + len(runs)} runs together trained and "
        f"decoded for {format_seconds(sum(r.result['train_s'] + r.result['decode_s'] for r in probe_runs + runs))} "
        f"(wall time of train.py and sample.py, scoring not included).", "",
        "## Main table", "",
        "| method | trainable | stored | " + " | ".join(m for m, _ in METRICS) + " | names the restaurant | training "
        "| decoding |", "|---|---|---|" + "---|" * len(METRICS) + "---|---|---|"]
    for run in (r for r in runs if r.group == "main"):
        r = run.result
        lines.append(f"| {r['label']} | {share(r['trainable'], r)} | {share(r['stored'], r)} | "
                     + " | ".join(cell(r["scores"], m, d) for m, d in METRICS)
                     + f" | {100 * names_copied(r['texts'], tables):.0f}% | {format_seconds(r['train_s'])} | "
                       f"{format_seconds(r['decode_s'])} |")
    lines += ["", "## Low data (mean ± half the range over seeds " + ", ".join(map(str, budget.seeds)) + ")", "",
              "| training pairs | prefix-tuning BLEU | fine-tuning BLEU | prefix-tuning ROUGE-L | fine-tuning ROUGE-L |",
              "|---|---|---|---|---|"]
    for size in budget.sizes:
        cells = [mean_spread(low_data(runs, mode, size), metric) for metric in ("BLEU", "ROUGE-L")
                 for mode in ("prefix", "finetune")]
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", "## Prefix length", "", "| P | stored | " + " | ".join(m for m, _ in METRICS) + " |",
              "|---|---|" + "---|" * len(METRICS)]
    for n, r in prefix_lengths(runs):
        lines.append(f"| {n} | {share(r['stored'], r)} | " + " | ".join(cell(r["scores"], m, d) for m, d in METRICS)
                     + " |")
    lines += ["", f"## Learning rates: dev loss after {budget.probe_iters} iterations (the lowest is used)", "",
              "| method | " + "rate: dev loss | " * len(max(budget.probe_rates.values(), key=len)) + "chosen |",
              "|---|" + "---|" * (len(max(budget.probe_rates.values(), key=len)) + 1)]
    for mode in budget.probe_rates:
        cells = [f"{run.flags[1]}: {run.result['val_curve'][-1][1]:.3f}" for run in probe_runs if run.mode == mode]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {rates[mode]} |")
    lines += ["", "## Outputs beside their tables (five test tables, evenly spaced)", ""]
    main = {run.name: run.result for run in runs if run.group == "main"}
    decoded = min(len(r["texts"]) for r in main.values())
    for i in sorted({round(k * (decoded - 1) / 4) for k in range(5)}):
        lines += [f"- `{tables[i]}`"] + [f"  - {main[name]['label']}: {main[name]['texts'][i]}"
                                         for name in ("prefix", "finetune", "adapter-0.1", "lora") if name in main]
    return "\n".join(lines) + "\n"


def names_copied(texts: list[str], tables: list[str]) -> float:
    """The share of texts that contain their table's restaurant name, as written in the table."""
    names = [table.split(" | ")[0].removeprefix("name : ") for table in tables]
    return sum(name in text for name, text in zip(names, texts)) / max(1, len(texts))


def share(count: int, result: dict) -> str:
    return f"{count:,} ({100 * count / result['gpt_parameters']:.2f}%)"


def cell(scores: dict, metric: str, decimals: int) -> str:
    return f"{scores[metric]:.{decimals}f}" if metric in scores else "-"


def low_data(runs: list[Run], mode: str, size: int) -> list[dict]:
    return [r.result for r in runs if r.group == "low-data" and r.mode == mode and f"lowdata-{mode}-{size}-" in r.name]


def mean_spread(results: list[dict], metric: str) -> str:
    values = [r["scores"][metric] for r in results if metric in r["scores"]]
    if not values:
        return "-"
    spread = f" ± {(max(values) - min(values)) / 2:.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def prefix_lengths(runs: list[Run]) -> list[tuple[int, dict]]:
    found = [(int(r.flags[r.flags.index("--prefix_len") + 1]),
              r.result if r.group == "length" else {**r.result, "scores": r.result["sweep_scores"]})
             for r in runs if r.group == "length" or r.name == "prefix"]
    return sorted(found, key=lambda pair: pair[0])


def figures(runs: list[Run], budget: Budget, results_dir: Path) -> None:
    """BLEU vs training pairs, BLEU vs prefix length, validation loss curves: PNGs (needs matplotlib)."""
    try:
        plt = pyplot()
    except UserError as e:
        print(f"no figures: {e}")
        return
    title = "\nsmall GPT-2 pretrained here, not the paper's"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mode, label in (("prefix", "prefix-tuning"), ("finetune", "fine-tuning")):
        means = [statistics.mean(r["scores"]["BLEU"] for r in low_data(runs, mode, n)) for n in budget.sizes]
        ax.plot(budget.sizes, means, marker="o", label=label)
    ax.set(xscale="log", xlabel="training pairs", ylabel="BLEU (E2E test)", title=f"Low data: {title}")
    ax.set_xticks(budget.sizes, [str(n) for n in budget.sizes], minor=False)
    ax.minorticks_off()
    ax.legend()
    save_figure(fig, results_dir / "bleu_vs_examples.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lengths = prefix_lengths(runs)
    ax.plot([n for n, _ in lengths], [r["scores"]["BLEU"] for _, r in lengths], marker="o")
    ax.set(xlabel="prefix length P", ylabel="BLEU (E2E test)", title=f"Prefix length: {title}")
    save_figure(fig, results_dir / "bleu_vs_prefix_length.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in (r for r in runs if r.group == "main"):
        curve = run.result["val_curve"]
        ax.plot([i for i, _ in curve], [v for _, v in curve], marker=".", label=run.result["label"])
    ax.set(xlabel="iteration", ylabel="validation loss per token", title=f"E2E dev loss: {title}")
    ax.legend(fontsize=7)
    save_figure(fig, results_dir / "loss_curves.png")


def save_figure(fig, path: Path) -> None:
    fig.axes[0].title.set_fontsize(10)
    fig.tight_layout()
    save_png(fig, path, dpi=120)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


if __name__ == "__main__":
    main()
