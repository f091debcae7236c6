"""A run folder (--out_dir) holds one training run, and every file in it carries the run's id:

    config.json          every setting after defaults, the GPT's config and what produced the run
    log.jsonl            one JSON record per line: the curves
    ckpt.pt              the training state that --resume continues from (runs/checkpoint.py)
    prefix.safetensors   the export of what was trained, at the end (runs/methods.py names it for each method), and
    prefix_best...       at the best validation loss
    eval/                sample.py's scored splits

A new run never mixes with an old one: it claims an empty folder, or with --overwrite removes an old run's files.
train.py writes a run through Run; sample.py and prefix.attention find one to decode with find_trained.
"""
from __future__ import annotations

import argparse
import json
import platform
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from common import atomic_path
from common.errors import UserError
from model import GPT, GPTConfig
from prefix.peft_format import load_peft_adapter, peft_base_model
from runs.checkpoint import device_rng_state, read_training_checkpoint, restore_training_state, set_device_rng_state
from runs.methods import (build_method, export_metadata, export_name, export_names, load_export, load_gpt,
                          save_export)

CHECKPOINT, CONFIG, LOG, EVAL = "ckpt.pt", "config.json", "log.jsonl", "eval"
# Arguments that define the run; --resume refuses to change them, so a resumed run is the same run
# (except data_dir: the same data may have moved).
RUN_ARGS = ("init_from", "dataset", "data_dir", "e2e_text", "skip_long_rows", "train_examples", "tuning_mode",
            "prefix_len", "mid_dim", "variant", "reparam", "prefix_dropout", "init_text", "positions_from_zero",
            "top_blocks", "adapter_dim", "lora_rank", "lora_alpha", "batch_size", "learning_rate", "weight_decay",
            "warmup_iters", "epochs", "max_iters", "grad_clip", "seed", "loss_reduction", "grad_accum")


@dataclass
class Run:
    """One training run in its folder, seen from one of its processes (only the master, rank 0, writes files)."""
    out_dir: Path
    args: argparse.Namespace   # train.py's settings; a resumed run's are those it was started with
    device: torch.device
    rank: int
    world: int                 # processes
    run_id: str
    checkpoint: dict | None    # the state a resumed run continues from; None for a new run

    @classmethod
    def open(cls, args: argparse.Namespace, argv, device: torch.device, rank: int, world: int) -> Run:
        """--resume: the run in --out_dir, its checked ckpt.pt, and its settings adopted into args. A new run: a
        new id, once the master has made sure the folder holds no other run (refused if it is not empty; with
        --overwrite, the old run's files go)."""
        out_dir = Path(args.out_dir)
        if not args.resume:
            if rank == 0:
                run_files = [*export_names(best=False), *export_names(best=True), CONFIG, LOG, CHECKPOINT, EVAL]
                claim_out_dir(out_dir, run_files, args.overwrite)
            return cls(out_dir, args, device, rank, world, new_run_id(), None)
        if not (out_dir / CHECKPOINT).exists():
            raise UserError(f"--resume found no {out_dir / CHECKPOINT}; start without --resume, or point --out_dir "
                            f"at an earlier run")
        checkpoint = read_training_checkpoint(out_dir / CHECKPOINT)
        if len(checkpoint["rng"]) != world:
            raise UserError(f"the run in {out_dir} was trained by {len(checkpoint['rng'])} process(es); resume it "
                            f"with as many (this is {world}), so that its data order and dropout carry on")
        adopt_run_args(args, checkpoint["args"], argv)
        return cls(out_dir, args, device, rank, world, checkpoint["run_id"], checkpoint)

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    @property
    def settings(self) -> dict:
        """What defines the run, as ckpt.pt keeps it."""
        return {name: getattr(self.args, name) for name in RUN_ARGS}

    def start(self, config: GPTConfig, **totals) -> None:
        """A new run's config.json: every setting after defaults, the GPT's config, `totals` (the global batch,
        the iterations) and what produced the run."""
        if not self.master:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        summary = {"run_id": self.run_id, "args": vars(self.args), "model": asdict(config), **totals,
                   "environment": environment()}
        with atomic_path(self.out_dir / CONFIG) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")

    def log(self, **record) -> None:
        """One line of log.jsonl, stamped with the run id."""
        if self.master:
            with open(self.out_dir / LOG, "a") as f:
                f.write(json.dumps({"run_id": self.run_id, **record}) + "\n")

    def restore(self, method: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
        """Put the resumed run's state back (trained tensors, AdamW, every generator), cut the curve back to the
        checkpoint; return (iteration, best validation loss)."""
        checkpoint = self.checkpoint
        restore_training_state(self.checkpoint_path, checkpoint, method, optimizer)
        torch.set_rng_state(checkpoint["rng"][self.rank])
        set_device_rng_state(self.device, checkpoint["device_rng"][self.rank])
        it, log = checkpoint["iter"], self.out_dir / LOG
        if self.master and log.exists():  # the curve goes on from the checkpoint: drop later lines
            kept = [line for line in open(log) if logged_iter(line) <= it]
            with atomic_path(log) as tmp:
                tmp.write_text("".join(kept))
        return it, checkpoint["best_val_loss"]

    def save_checkpoint(self, it: int, best_val: float, method: nn.Module, optimizer: torch.optim.Optimizer,
                        config: GPTConfig) -> None:
        """ckpt.pt: everything --resume needs to continue bit for bit, written whole or not at all."""
        # each process draws its own dropout masks: keep every one's generators, its device's too
        rng, device_rng = [torch.get_rng_state()], [device_rng_state(self.device)]
        if self.world > 1:
            rng, device_rng = [None] * self.world, [None] * self.world
            dist.all_gather_object(rng, torch.get_rng_state())
            dist.all_gather_object(device_rng, device_rng_state(self.device))
        if not self.master:
            return
        state = {"run_id": self.run_id, "iter": it, "best_val_loss": best_val, "trained": method.state_dict(),
                 "optimizer": optimizer.state_dict(), "rng": rng, "device_rng": device_rng, "args": self.settings,
                 "config": asdict(config)}
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def export_path(self, best: bool) -> Path:
        return self.out_dir / export_name(self.args.tuning_mode, best)

    def export(self, method: nn.Module, gpt: GPT, tokenizer, best: bool) -> Path:
        """Write what the method trained (the master alone), stamped with the run id and the data it was trained on."""
        path = self.export_path(best)
        if self.master:
            stamp = {"run_id": self.run_id, "dataset": self.args.dataset, "e2e_text": self.args.e2e_text}
            save_export(method, gpt, path, vars(self.args), tokenizer, stamp)
        return path


def logged_iter(line: str) -> float:
    """The iteration of a log.jsonl line; infinity for a line cut short by a crash, so that resuming drops it."""
    try:
        return json.loads(line)["iter"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def adopt_run_args(args: argparse.Namespace, saved: dict, argv) -> None:
    """A resumed run keeps its own settings; a flag on the command line that contradicts them is an error."""
    given = {a.split("=")[0].removeprefix("--").removeprefix("no-").replace("-", "_")
             for a in (argv or sys.argv[1:]) if a.startswith("--")}
    for name, value in saved.items():
        if name == "data_dir" and name in given:
            continue
        if name in given and getattr(args, name) != value:
            raise UserError(f"--{name} {getattr(args, name)} contradicts the run being resumed ({value}); drop it, "
                            f"or start a new run in another --out_dir")
        setattr(args, name, value)


# ---- finding a run to decode --------------------------------------------------------------------------------

@dataclass
class Trained:
    """What a run (or a PEFT adapter) decodes with."""
    export: Path | None        # the export to load; None: ckpt.pt, the latest state of a run that has not finished
    checkpoint: dict | None    # the run's training checkpoint, when it has one
    settings: dict             # the run's settings: ckpt.pt's, else what the export records
    checkpoint_path: Path | None = None
    peft: bool = False         # export is a Hugging Face PEFT prefix-tuning adapter

    @property
    def source(self) -> Path:
        return self.export or self.checkpoint_path

    def load(self, init_from: str | None, device) -> tuple[GPT, nn.Module, object]:
        """The GPT, the trained method ready to decode, and the tokenizer; the GPT is `init_from`, else the one the
        method was trained on (a fine-tuned GPT is the export itself)."""
        base_model = init_from or self.settings["init_from"]
        if self.peft:
            gpt, tokenizer = load_gpt(base_model, device)
            return gpt, load_peft_adapter(self.export, gpt.config).to(device), tokenizer
        if self.export is not None:
            return load_export(self.export, base_model, device)
        gpt, tokenizer = load_gpt(base_model, device)
        if self.checkpoint["config"] != asdict(gpt.config):
            raise UserError(f"{self.checkpoint_path} was trained for {self.settings['init_from']}, not this model; "
                            f"load it with --init_from {self.settings['init_from']}")
        method = build_method(self.settings, gpt)
        restore_training_state(self.checkpoint_path, self.checkpoint, method)
        return gpt, method.export().to(device), tokenizer


def find_trained(out_dir, which: str, peft_adapter=None) -> Trained:
    """The run in out_dir, to decode its `which` ("final" or "best") export, or its ckpt.pt when the run has not
    finished and `which` is final; or, given peft_adapter, that adapter (which records only its GPT-2)."""
    if peft_adapter:
        return Trained(Path(peft_adapter), None, {"init_from": peft_base_model(peft_adapter)}, peft=True)
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"there is no training run at {out_dir}; train one with train.py --out_dir {out_dir}")
    checkpoint_path = out_dir / CHECKPOINT
    checkpoint = read_training_checkpoint(checkpoint_path) if checkpoint_path.exists() else None
    export = _export_in(out_dir, which)
    if export is None and (checkpoint is None or which == "best"):
        other = "final" if which == "best" else "best"
        found = _export_in(out_dir, other)
        hint = f"; it holds {found.name}: pass --prefix {other}" if found else ""
        if found is None and checkpoint is not None:
            hint = "; its ckpt.pt (the latest state of training) is decoded with --prefix final"
        raise UserError(f"{out_dir} holds no {which} export of a trained method"
                        f"{' nor ckpt.pt' if which == 'final' else ''}{hint}")
    metadata = export_metadata(export) if export is not None else {}
    if checkpoint and export is not None and metadata.get("run_id") != checkpoint["run_id"]:
        raise UserError(f"{export} was not written by the run in {checkpoint_path} (run "
                        f"{str(metadata.get('run_id'))[:64]}, not {checkpoint['run_id']}); it is left from another "
                        f"run: delete it, or retrain with train.py --overwrite")
    if checkpoint:
        settings = checkpoint["args"]
    else:  # what the export records (fine-tuning's, a GPT-2 checkpoint, records no base model: it is one)
        settings = {"init_from": metadata.get("base_model"), "dataset": metadata.get("dataset"),
                    "e2e_text": metadata.get("e2e_text")}
    return Trained(export, checkpoint, settings, checkpoint_path)


def _export_in(out_dir: Path, which: str) -> Path | None:
    """The run's final or best export, whichever kind of method wrote it."""
    return next((out_dir / name for name in export_names(which == "best") if (out_dir / name).exists()), None)


def new_run_id() -> str:
    """When the run started, and 6 random hex digits against two runs started in the same second."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def claim_out_dir(out_dir: Path, run_files: list[str], overwrite: bool) -> None:
    """Make sure a new run starts in an empty folder: refuse one that holds anything, unless `overwrite`, which
    removes an earlier run's files (and only those) first."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--out_dir {out_dir} is not empty; continue its run with --resume, replace it with "
                        f"--overwrite, or choose another --out_dir")
    for name in run_files:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def environment() -> dict:
    """What produced a run besides its arguments: the versions, and the code's git commit when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = commit is not None and bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git, or not a clone
        commit, dirty = None, False
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "git_commit": commit, "git_uncommitted_changes": dirty, "command": [sys.executable, *sys.argv]}
