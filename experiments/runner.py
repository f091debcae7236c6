"""One run of the miniature: train.py in segments (--stop_at), the state at each evaluation point decoded with beam
5 by sample.py and scored, the curve saved in the run's progress.json so that finished segments are reused.

It calls train.main(argv) and sample.main(argv) as a user would call the scripts, and reads only what they leave
in the run folder: log.jsonl (the dev losses), ckpt.pt and the exports (the parameter counts), eval/ (the texts and
their scores).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import sample
import train
from common import atomic_path
from model import GPT
from model import safetensors

# Early stopping: only when none of the last PATIENCE evaluations improved the best dev loss by more than
# TOLERANCE (relative), and not before half the schedule: the linear decay still lowers the loss late.
PATIENCE, TOLERANCE = 3, 0.002
EXPORTS = {"prefix": "prefix_best.safetensors", "finetune": "model_best/model.safetensors"}  # else tuned_best


@dataclass(frozen=True)
class Setup:
    """What every run shares."""
    work: Path            # every LM's folder, and every run's under tuning/<LM>/
    e2e_dir: Path
    eval_iters: int       # dev batches per evaluation
    curve_tables: int     # the first test tables decoded at each evaluation point (the curve's BLEU)
    test_tables: int | None  # ... at the end of a run of the main table (None: all of them)
    max_new_tokens: int
    coco: bool            # METEOR, ROUGE-L and CIDEr in the main table's final scores


@dataclass
class Run:
    name: str             # its folder, under the LM's
    stage: str            # the stage that plans it
    label: str            # its row in the tables
    lm: str               # the LM it tunes (a folder in Setup.work)
    mode: str             # --tuning_mode
    flags: list[str]      # the method's train.py flags
    iters: int            # the schedule's length (linear decay to zero at its end)
    eval_every: int       # iterations between dev-loss evaluations
    curve: bool = True    # decode and score at every evaluation (else only the state kept, at the end)
    keep: str = "final"   # the state scored at the end: final (as the authors decode) or best (lowest dev loss)
    main_table: bool = False  # at its end, decode every test table and score every metric
    data_dir: Path | None = None  # a low-data training subset (default: the whole E2E)
    rate: float | None = None
    result: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.iters % self.eval_every:
            raise ValueError(f"{self.name}: {self.iters} iterations are not a multiple of {self.eval_every}")

    @property
    def points(self) -> list[int]:
        return list(range(self.eval_every, self.iters + 1, self.eval_every))

    def at_rate(self, rate: float) -> "Run":
        return dataclasses.replace(self, rate=rate, flags=list(self.flags), result={})

    def folder(self, setup: Setup) -> Path:
        return setup.work / "tuning" / self.lm / f"{self.name}-lr{format_rate(self.rate)}"


def format_rate(rate: float) -> str:
    return f"{rate:.3g}"


class Failed(RuntimeError):
    """A script exited with an error; the message is its last line (the user error it printed)."""


def run_script(script, argv: list[str], log: Path) -> float:
    """Run train.py's or sample.py's main() with these flags in this process (no interpreter to start each time),
    its output appended to `log`; the seconds it took."""
    started = time.time()
    handler = signal.getsignal(signal.SIGINT)  # train.py installs its own Ctrl-C handler
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            script.main(argv)
        except SystemExit as e:  # a user error: one sentence in the log
            if e.code:
                lines = log.read_text().splitlines()
                raise Failed(lines[-1] if lines else f"{script.__name__} failed") from None
        finally:
            signal.signal(signal.SIGINT, handler)
    return time.time() - started


def advance(run: Run, setup: Setup, until: int | None = None) -> dict:
    """Train the run up to the evaluation point `until` (None: to its end), scoring each evaluation point on the
    way; at its end, score the state it keeps. Its progress: reused from progress.json, extended, saved."""
    out = run.folder(setup)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "progress.json"
    progress = json.loads(path.read_text()) if path.exists() else {
        "curve": [], "train_s": 0.0, "decode_s": 0.0, "stopped_early": None, "diverged": None, "end": None}
    target = run.iters if until is None else until
    while progress["end"] is None and trained_to(progress) < target:
        stop = next(p for p in run.points if p > trained_to(progress)) if run.curve else run.iters
        try:
            progress["train_s"] += train_to(run, setup, out, stop)
        except Failed as e:
            if "diverged" not in str(e):
                raise
            progress["diverged"] = progress["end"] = stop  # a rate too high: the candidate is worse than any other
            break
        if run.curve:
            bleu, seconds = decode(run, setup, out, "final", setup.curve_tables, coco=False)
            progress["curve"].append([stop, dev_losses(out)[stop], bleu["BLEU"], progress["train_s"]])
            progress["decode_s"] += seconds
            if stop < run.iters and stopped_improving(progress["curve"], run):
                progress["stopped_early"] = stop
        else:
            progress["curve"] = [[it, loss, None, None] for it, loss in dev_losses(out).items() if it]
        if trained_to(progress) == run.iters or progress["stopped_early"]:
            progress["end"] = trained_to(progress)
        save(progress, path)
    if progress["end"] is not None and "scores" not in progress and not progress["diverged"]:
        finish(run, setup, out, progress)
        save(progress, path)
    run.result = progress
    return progress


def trained_to(progress: dict) -> int:
    return progress["curve"][-1][0] if progress["curve"] else 0


def train_to(run: Run, setup: Setup, out: Path, stop: int) -> float:
    """train.py up to iteration `stop` of the run's schedule; the seconds it took."""
    data = run.data_dir or setup.e2e_dir
    flags = ["--init_from", str(setup.work / run.lm), "--data_dir", str(data), "--out_dir", str(out),
             "--tuning_mode", run.mode, *run.flags, "--learning_rate", format_rate(run.rate),
             "--max_iters", str(run.iters), "--epochs", "1000",  # the iterations decide, however many epochs
             "--eval_interval", str(run.eval_every), "--eval_iters", str(setup.eval_iters),
             "--log_interval", str(max(1, run.eval_every // 5)), "--stop_at", str(stop)]
    # a folder that holds only progress.json and logs starts afresh; one with a checkpoint goes on from it
    flags.append("--resume" if (out / "ckpt.pt").exists() else "--overwrite")
    return run_script(train, flags, out / "train.log")


def dev_losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["iter"]: r["val_loss"] for r in records if "val_loss" in r}


def decode(run: Run, setup: Setup, out: Path, which: str, tables: int | None, coco: bool) -> tuple[dict, float]:
    """sample.py on the first `tables` test tables (None: all), beam 5: (its scores, seconds). `final` is the
    export at the end of the schedule, or the checkpoint of a run that has paused."""
    seconds = run_script(sample, ["--out_dir", str(out), "--split", "test", "--data_dir", str(setup.e2e_dir),
                                  "--prefix", which, *(["--max_examples", str(tables)] if tables else []),
                                  "--max_new_tokens", str(setup.max_new_tokens), "--coco" if coco else "--no-coco"],
                         out / "sample.log")
    return json.loads((out / "eval" / "e2e-test" / "scores.json").read_text())["scores"], seconds


def stopped_improving(curve: list, run: Run) -> bool:
    """Dev loss has clearly stopped improving: past half the schedule, none of the last PATIENCE evaluations
    lowered the best before them by more than TOLERANCE."""
    if len(curve) <= PATIENCE or curve[-1][0] < run.iters / 2:
        return False
    best_before = min(loss for _, loss, *_ in curve[:-PATIENCE])
    return min(loss for _, loss, *_ in curve[-PATIENCE:]) > best_before * (1 - TOLERANCE)


def finish(run: Run, setup: Setup, out: Path, progress: dict) -> None:
    """The run's end: the kept state scored (every test table and metric for the main table, else the curve's
    tables), its texts, and its parameter counts."""
    if run.main_table:
        progress["scores"], seconds = decode(run, setup, out, run.keep, setup.test_tables, setup.coco)
    elif run.curve and run.keep == "final":  # the last evaluation point was this very state
        progress["scores"], seconds = {"BLEU": progress["curve"][-1][2]}, 0.0
    else:
        progress["scores"], seconds = decode(run, setup, out, run.keep, setup.curve_tables, coco=False)
    progress["decode_s"] += seconds
    progress["kept"] = progress["end"] if run.keep == "final" else min(progress["curve"], key=lambda p: p[1])[0]
    progress["texts"] = (out / "eval" / "e2e-test" / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    progress["parameters"] = parameter_counts(run, setup, out)


def parameter_counts(run: Run, setup: Setup, out: Path) -> dict[str, int]:
    """Numbers the method trains (its checkpoint's tensors), numbers its export stores, and the GPT's own."""
    trained = torch.load(out / "ckpt.pt", weights_only=True)["trained"]
    export = out / EXPORTS.get(run.mode, "tuned_best.safetensors")
    gpt = GPT.from_pretrained(str(setup.work / run.lm))
    return {"trainable": sum({t.data_ptr(): t.numel() for t in trained.values()}.values()),  # a tied weight once
            "stored": sum(t.numel() for t in safetensors.load_file(export).values()),
            "gpt": sum(p.numel() for p in gpt.parameters())}


def save(progress: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(progress, indent=1))
