"""The paper's E2E comparisons in miniature, in one command on a CPU, with small GPT-2s pretrained here.

    python -m experiments.e2e_small            # the LMs (built once), every stage, the tables and figures (~5 h)
    python -m experiments.e2e_small --quick    # the same pipeline on tiny settings, for the tests

Every method trains through train.py and decodes through sample.py (beam 5, as the paper), with the flags a user
would give them (experiments/runner.py). The stages, each run at the learning rate chosen for its own budget
(experiments/rates.py):
  - to convergence: prefix-tuning, its ablations (embedding-only, infix), fine-tuning and LoRA on the full E2E
    training set, evaluated along the way (dev loss, and BLEU on the first test tables);
  - main table: FT-top2 and adapters at the paper's two budgets (0.1% and 3% of the GPT), on a shorter budget;
  - LM scale: prefix-tuning vs fine-tuning on each LM, 4×64, 6×128 (the main one) and 8×256;
  - low data (the paper's §6.3): prefix-tuning (random and real-word initialisation) vs fine-tuning on 50, 100,
    200, 500 training pairs, 5 subsets × 2 seeds, the best evaluation by dev loss kept;
  - prefix length (§7.1) on the converged protocol.
Runs already finished in --work_dir are reused, segment by segment, so an interrupted experiment continues where
it stopped. The numbers belong to LMs of 3 to 20 million parameters trained for minutes on this machine, not to
the paper's GPT-2 medium: they show what each method does with a weak LM, and how that changes as the LM grows.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from baselines import adapter_dim_for_share
from common import UserError, exit_on_user_error
from common.cli import ArgumentParser
from common.progress import format_duration
from experiments import pretrain_small
from experiments.rates import choose_rate
from experiments.report import write_results
from experiments.runner import Run, Setup, advance, run_script
from experiments.subsets import training_subset
from model import GPT
from model.loading import read_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
INIT_TEXT = "describe the restaurant from its table in one sentence:"  # 10 tokens: a prefix of P = 10


@dataclass(frozen=True)
class Budget:
    lms: dict[str, tuple[str, ...]]  # each LM's pretrain_small.py flags, smallest first
    main_lm: str                     # the LM of every stage but the scale one
    converged_iters: int             # the converged protocol: training iterations, linear decay to zero
    converged_evals: int             # evaluation points along it (dev loss and the curve's BLEU at each)
    short_iters: int                 # the main table's other rows
    short_evals: int
    probe_evals: int                 # a learning-rate probe trains up to this evaluation point of its schedule
    short_probe_evals: int
    probe_grid: tuple[int, ...]      # the first candidates: start rate × 3^k
    widenings: int                   # at most this many more candidates while the best is at an edge
    low_data_iters: int
    low_data_eval_every: int         # the authors': every 50 steps, the best by dev loss kept
    low_data_warmup: int
    sizes: tuple[int, ...]           # low-data training pairs
    subsets: int                     # low-data training sets per size
    seeds: tuple[int, ...]           # low-data seeds per subset (the prefix's start, the data order)
    lengths: tuple[int, ...]         # prefix lengths besides 10, on the converged protocol
    scale_modes: tuple[str, ...]     # the methods trained on every LM
    eval_iters: int                  # dev batches per evaluation
    curve_tables: int                # test tables decoded at each evaluation point (and for low data)
    test_tables: int | None          # test tables of the main table (None: all 630)
    max_new_tokens: int = 60


# Start of each method's learning-rate grid (rates.py widens it as needed): near the rates the shorter runs of the
# first miniature chose (the paper's 8e-5 is for 5 epochs of GPT-2 medium, far too small for a small LM).
START_RATES = {"prefix": 3e-3, "finetune": 1e-3, "finetune-top": 3e-3, "adapter": 1e-2, "lora": 1e-2}
LMS = {"lm-4x64": ("--n_layer", "4", "--n_head", "2", "--n_embd", "64"),
       "lm-6x128": ("--n_layer", "6", "--n_head", "4", "--n_embd", "128"),  # pretrain_small.py's defaults
       "lm-8x256": ("--n_layer", "8", "--n_head", "8", "--n_embd", "256")}
QUICK_LM = ("--seq_len", "32", "--batch_size", "2", "--max_iters", "4", "--eval_interval", "2", "--corpus_docs",
            "200", "--n_layer", "2", "--n_head", "2")
FULL = Budget(lms=LMS, main_lm="lm-6x128", converged_iters=8 * 525, converged_evals=8, short_iters=1500,
              short_evals=6, probe_evals=2, short_probe_evals=4, probe_grid=(-1, 0, 1), widenings=3,
              low_data_iters=250, low_data_eval_every=50, low_data_warmup=25, sizes=(50, 100, 200, 500), subsets=5,
              seeds=(1, 2), lengths=(5, 20), scale_modes=("prefix", "finetune"), eval_iters=20, curve_tables=100,
              test_tables=None)
QUICK = Budget(lms={f"lm-2x{w}": (*QUICK_LM, "--n_embd", str(w)) for w in (16, 32, 48)}, main_lm="lm-2x32",
               converged_iters=4, converged_evals=2, short_iters=2, short_evals=1, probe_evals=1,
               short_probe_evals=1, probe_grid=(0,), widenings=0, low_data_iters=2, low_data_eval_every=1,
               low_data_warmup=1, sizes=(50,), subsets=2, seeds=(1,), lengths=(1,), scale_modes=("prefix", "finetune"),
               eval_iters=1, curve_tables=2, test_tables=2, max_new_tokens=4)

# Seconds per training iteration (batch 10) of each LM and method, per decoded table (beam 5, 60 new tokens: a
# random LM never ends a text) and of pretraining (2,000 iterations of 16 × 128 tokens), measured with
# OMP_NUM_THREADS=1 while the other core was busy, times TWO_CORES: the first miniature's prefix-tuning trained
# 1,500 iterations of the 6×128 LM in 137 s with both cores, 0.55 of the one-core figure. For the estimates only.
COSTS = {"lm-4x64": {"prefix": 0.10, "finetune": 0.16, "other": 0.11, "table": 0.14, "pretrain": 2000 * 0.64},
         "lm-6x128": {"prefix": 0.17, "finetune": 0.25, "other": 0.18, "table": 0.16, "pretrain": 2000 * 1.82},
         "lm-8x256": {"prefix": 0.47, "finetune": 0.77, "other": 0.55, "table": 0.45, "pretrain": 2000 * 3.02}}
TWO_CORES = 0.55


class Progress:
    """Prints 'stage i of n, run j of m, elapsed, remaining' before each run; remaining is the plan's estimate
    (COSTS) of the runs not yet finished, in this call or an earlier one."""

    def __init__(self, stages: dict[str, list[float]]):
        self.stages, self.started, self.done = stages, time.time(), 0.0
        self.stage, self.run = None, 0

    def begin(self, stage: str) -> None:
        self.stage, self.run = stage, 0

    def announce(self, run: Run) -> None:
        self.step(f"{run.lm} {run.label} at {run.rate:.3g}")

    def step(self, what: str) -> None:
        names = list(self.stages)
        planned = self.stages[self.stage]
        self.run += 1
        remaining = sum(sum(costs) for costs in self.stages.values()) - self.done
        print(f"stage {names.index(self.stage) + 1} of {len(names)} ({self.stage}), run {self.run} of "
              f"{max(self.run, len(planned))}: {what} | elapsed {format_duration(time.time() - self.started)}, "
              f"remaining ~{format_duration(max(0.0, remaining))}", flush=True)
        if self.run <= len(planned):
            self.done += planned[self.run - 1]


def estimate(run: Run, until: int | None = None) -> float:
    """The run's seconds by COSTS (to `until` for a probe): training, and decoding where it decodes."""
    cost = COSTS.get(run.lm, dict.fromkeys(("prefix", "finetune", "other", "table"), 0.0))  # --quick: unknown
    iters = until or run.iters
    decoded = (len([p for p in run.points if p <= iters]) if run.curve else 1) * 100 + 630 * run.main_table
    return TWO_CORES * (iters * cost.get(run.mode, cost["other"]) + decoded * cost["table"])


# ---- the stages: each returns its runs (finished) and its learning-rate probes -------------------------------

class Experiment:
    def __init__(self, budget: Budget, setup: Setup, progress: Progress):
        self.budget, self.setup, self.progress = budget, setup, progress

    def choose(self, run: Run, until: int | None, start: float | None = None) -> tuple[Run, dict]:
        """The run at the rate its probes chose (see rates.py), and the probes."""
        return choose_rate(run, start or START_RATES[run.mode], until, self.setup, self.budget.probe_grid,
                           self.budget.widenings, self.progress.announce)

    def complete(self, run: Run) -> Run:
        self.progress.announce(run)
        advance(run, self.setup)
        return run

    def converged(self, lm: str, modes: tuple[str, ...]) -> tuple[list[Run], dict]:
        """The converged protocol on one LM: a run per method at its chosen rate; on the main LM also the
        prefix's ablations and other lengths, at the prefix's rate."""
        b = self.budget
        every = b.converged_iters // b.converged_evals
        main = lm == b.main_lm
        base = dict(stage="converged", lm=lm, iters=b.converged_iters, eval_every=every, main_table=main)
        methods = {"prefix": Run("prefix", label="prefix-tuning (P = 10)", mode="prefix",
                                 flags=["--prefix_len", "10"], **base),
                   "finetune": Run("finetune", label="fine-tuning", mode="finetune", flags=[], **base),
                   "lora": Run("lora", label="LoRA (rank 4)", mode="lora",
                               flags=["--lora_rank", "4", "--lora_alpha", "8"], **base)}
        runs, probes = [], {}
        for mode in modes:
            run, probes[f"{lm} {mode}"] = self.choose(methods[mode], every * b.probe_evals)
            runs.append(self.complete(run))
        if main:
            rate = probes[f"{lm} prefix"]["chosen"]
            others = [Run("embedding-only", label="embedding-only (P = 10)", mode="prefix",
                          flags=["--prefix_len", "10", "--variant", "embedding-only"], rate=rate, **base),
                      Run("infix", label="infix-tuning (P = 10)", mode="prefix",
                          flags=["--prefix_len", "10", "--variant", "infix"], rate=rate, **base)]
            others += [Run(f"length-{n}", label=f"prefix-tuning (P = {n})", mode="prefix",
                           flags=["--prefix_len", str(n)], rate=rate, **{**base, "main_table": False})
                       for n in b.lengths]
            runs += [self.complete(run) for run in others]
        return runs, probes

    def short_rows(self) -> tuple[list[Run], dict]:
        """The main table's other rows on the shorter budget: FT-top2 and adapters at 0.1% and 3% of the GPT,
        each adapter size at its own rate (their parameters differ 30-fold)."""
        b = self.budget
        lm = self.setup.work / b.main_lm
        gpt_parameters = sum(p.numel() for p in GPT.from_pretrained(str(lm)).parameters())
        dims = {share: adapter_dim_for_share(read_config(lm), share, gpt_parameters) for share in (0.001, 0.03)}
        every = b.short_iters // b.short_evals
        base = dict(stage="short", lm=b.main_lm, iters=b.short_iters, eval_every=every, main_table=True)
        rows = [Run("finetune-top2", label="FT-top2", mode="finetune-top", flags=["--top_blocks", "2"], **base),
                Run("adapter-0.1", label=f"adapter 0.1% (bottleneck {dims[0.001]})", mode="adapter",
                    flags=["--adapter_dim", str(dims[0.001])], **base),
                Run("adapter-3", label=f"adapter 3% (bottleneck {dims[0.03]})", mode="adapter",
                    flags=["--adapter_dim", str(dims[0.03])], **base)]
        runs, probes = [], {}
        for row in rows:
            run, probes[f"{b.main_lm} {row.name}"] = self.choose(row, every * b.short_probe_evals)
            runs.append(self.complete(run))
        return runs, probes

    def low_data(self) -> tuple[list[Run], dict]:
        """Each method on `size` training pairs, subsets × seeds of them, the best evaluation by dev loss kept.
        Its rate is probed by whole runs on the second size's first subset and seed."""
        b = self.budget
        probe_size = b.sizes[min(1, len(b.sizes) - 1)]
        runs, probes = [], {}
        for variant in LOW_DATA:
            chosen, probes[f"{b.main_lm} low data {variant}"] = self.choose(
                self.low_data_run(variant, probe_size, 1, b.seeds[0]), None)
            for size in b.sizes:
                for subset in range(1, b.subsets + 1):
                    for seed in b.seeds:
                        # the probe at the chosen rate is one of these runs: reused, not trained again
                        runs.append(self.complete(self.low_data_run(variant, size, subset, seed).at_rate(
                            chosen.rate)))
        return runs, probes

    def low_data_run(self, variant: str, size: int, subset: int, seed: int) -> Run:
        label, mode, flags = LOW_DATA[variant]
        b = self.budget
        data = training_subset(self.setup.e2e_dir, size, subset, self.setup.work / "data" / f"e2e-{size}-{subset}")
        return Run(f"lowdata-{variant}-{size}-subset{subset}-seed{seed}", "low data", label, b.main_lm, mode,
                   [*flags, "--seed", str(seed), "--warmup_iters", str(b.low_data_warmup)], b.low_data_iters,
                   b.low_data_eval_every, curve=False, keep="best", data_dir=data)


# variant -> (label, --tuning_mode, flags)
LOW_DATA = {"prefix": ("prefix-tuning", "prefix", ["--prefix_len", "10"]),
            "prefix-init": ("prefix-tuning, real-word init", "prefix", ["--prefix_len", "10", "--init_text",
                                                                         INIT_TEXT]),
            "finetune": ("fine-tuning", "finetune", [])}


def plan_costs(budget: Budget) -> dict[str, list[float]]:
    """The estimated seconds of each stage's runs in the order they are announced: for each method, its first
    probes (the grid's first candidates), then the rest of its run at the chosen rate."""
    main = budget.main_lm
    every = budget.converged_iters // budget.converged_evals

    def probed(run: Run, until: int | None) -> list[float]:
        return [estimate(run, until)] * len(budget.probe_grid) + [estimate(run) - estimate(run, until)]

    def converged_run(lm: str, mode: str, main_table: bool = False) -> Run:
        return Run(mode, "converged", mode, lm, mode, [], budget.converged_iters, every, main_table=main_table)

    short = {mode: Run(mode, "short", mode, main, mode, [], budget.short_iters,
                       budget.short_iters // budget.short_evals, main_table=True) for mode in ("finetune-top", "adapter")}
    low_data = {mode: Run(mode, "low data", mode, main, mode, [], budget.low_data_iters, budget.low_data_eval_every,
                          curve=False) for mode in ("prefix", "finetune")}
    runs_per_variant = len(budget.sizes) * budget.subsets * len(budget.seeds)
    return {
        "pretraining": [TWO_CORES * COSTS.get(lm, {}).get("pretrain", 0.0) for lm in budget.lms],
        "to convergence": [cost for mode in ("prefix", "finetune", "lora")
                           for cost in probed(converged_run(main, mode, True), every * budget.probe_evals)]
                          + [estimate(converged_run(main, "prefix", True))] * 2
                          + [estimate(converged_run(main, "prefix"))] * len(budget.lengths),
        "main table": [cost for mode in ("finetune-top", "adapter", "adapter")
                       for cost in probed(short[mode], short[mode].eval_every * budget.short_probe_evals)],
        "LM scale": [cost for lm in budget.lms if lm != main for mode in budget.scale_modes
                     for cost in probed(converged_run(lm, mode), every * budget.probe_evals)],
        "low data": [estimate(low_data[mode]) for mode in ("prefix", "prefix", "finetune")
                     for _ in range(len(budget.probe_grid) + runs_per_variant)]}


def pretrain(budget: Budget, setup: Setup, webnlg_dir: Path, progress: Progress) -> float:
    """Build each LM unless it is there; the seconds it took (0 when all are reused)."""
    seconds = 0.0
    progress.begin("pretraining")
    for name, flags in budget.lms.items():
        lm = setup.work / name
        if (lm / "model.safetensors").exists():
            progress.step(f"{name}, pretrained before: reused")
            continue
        lm.parent.mkdir(parents=True, exist_ok=True)
        progress.step(f"pretraining {name} into {lm} (log: {lm}.log)")
        seconds += run_script(pretrain_small, ["--out_dir", str(lm), "--e2e_dir", str(setup.e2e_dir),
                                               "--webnlg_dir", str(webnlg_dir), *flags], Path(f"{lm}.log"))
    return seconds


def merge(stages) -> tuple[list[Run], dict]:
    runs, probes = [], {}
    for stage_runs, stage_probes in stages:
        runs, probes = runs + stage_runs, probes | stage_probes
    return runs, probes


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: the whole pipeline in under a minute")
    p.add_argument("--work_dir", default=str(ROOT / "experiments" / "runs"),
                   help="the LMs and every run's folder (reused when found)")
    p.add_argument("--results_dir", default=str(ROOT / "experiments" / "results"),
                   help="where results.md, results.json and the figures go")
    p.add_argument("--e2e_dir", default=str(SHARED / "e2e"), help="the E2E release (zip or CSVs)")
    p.add_argument("--webnlg_dir", default=str(SHARED / "webnlg"), help="the WebNLG 2017 XML (pretraining text)")
    p.add_argument("--coco", action=argparse.BooleanOptionalAction, default=True,
                   help="METEOR, ROUGE-L and CIDEr too in the main table (pycocoevalcap and Java)")
    return p.parse_args(argv)


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    budget = QUICK if args.quick else FULL
    e2e_dir, webnlg_dir = Path(args.e2e_dir), Path(args.webnlg_dir)
    if not e2e_dir.exists() or not webnlg_dir.exists():
        raise UserError(f"the experiment needs the E2E release ({e2e_dir}) and WebNLG 2017 ({webnlg_dir}); "
                        f"pass --e2e_dir and --webnlg_dir")
    setup = Setup(Path(args.work_dir), e2e_dir, budget.eval_iters, budget.curve_tables, budget.test_tables,
                  budget.max_new_tokens, args.coco)
    progress = Progress(plan_costs(budget))
    pretrain_s = pretrain(budget, setup, webnlg_dir, progress)
    experiment = Experiment(budget, setup, progress)
    stages = {"to convergence": lambda: experiment.converged(budget.main_lm, ("prefix", "finetune", "lora")),
              "main table": experiment.short_rows,
              "LM scale": lambda: merge(experiment.converged(lm, budget.scale_modes)
                                        for lm in budget.lms if lm != budget.main_lm),
              "low data": experiment.low_data}

    def in_order():
        for stage, plan in stages.items():
            progress.begin(stage)
            yield plan()
    runs, probes = merge(in_order())
    summary = {"budget": asdict(budget), "pretrain_s_this_call": pretrain_s,
               "total_s_this_call": time.time() - progress.started,
               "estimated_s": {stage: sum(costs) for stage, costs in progress.stages.items()}}
    write_results(summary, runs, probes, budget, setup, Path(args.results_dir))
    print(f"done in {format_duration(time.time() - progress.started)}: {Path(args.results_dir) / 'results.md'}")


if __name__ == "__main__":
    main()
