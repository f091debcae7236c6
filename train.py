"""Prefix-tune a frozen GPT-2 on table-to-text (E2E or WebNLG), in the spirit of nanoGPT's train.py.

    python train.py --prefix_len 10                       # E2E with the paper's training settings, on gpt2
    python train.py --dataset webnlg --data_dir ../shared/data/webnlg --init_from gpt2-medium
    python train.py --tuning_mode finetune                # a baseline: finetune | finetune-top | adapter | lora
    torchrun --nproc_per_node 4 train.py ...              # DDP on 4 GPUs (or CPU processes with gloo)

Only the prefix trains (P' and its MLP); the GPT is frozen and stays in eval mode. The baselines train weights
inside the GPT instead (baselines/). Everything lands in --out_dir: ckpt.pt (the training state, to --resume
from), the export of what was trained at the end and at the best validation loss (prefix.safetensors and
prefix_best.safetensors: P, no MLP; tuned[_best].safetensors for FT-top2, adapters and LoRA; model[_best]/, a
whole GPT-2 checkpoint, for fine-tuning), and log.jsonl (the curves).
"""
import argparse
import functools
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from baselines import BASELINES, build_baseline, save_tuned
from common import UserError, atomic_path, exit_on_user_error
from common.cli import ArgumentParser, autocast, check_ranges, pick_device, pick_dtype
from common.memory import reuse_freed_memory
from common.progress import format_duration
from common.runs import claim_out_dir, environment, new_run_id, peak_memory
from data import TEXT_FORMS, tokenized_split
from model import GPT, GPTConfig
from model.loading import checkpoint_dir, read_config, save_pretrained
from model.tokenizer import get_tokenizer
from prefix import VARIANTS, build_prefix, freeze, init_from_text, parameter_report, save_prefix
from prefix.artifact import read_training_checkpoint, restore_training_state

# The paper's table-to-text settings (Li & Liang 2021, §5 and Appendix A): AdamW, linear decay, MLP k = 512; the
# prefix lengths are the authors' commands' (--preseqlen 10 for E2E, their train_e2e.py default; 5 for WebNLG).
PAPER = {"e2e": dict(learning_rate=8e-5, batch_size=10, epochs=5, prefix_len=10),
         "webnlg": dict(learning_rate=5e-5, batch_size=5, epochs=5, prefix_len=5)}
LOSS_NAMES = {"sentence": "summed over each text, averaged over texts", "token": "mean per target token"}
# Arguments that define the run; --resume refuses to change them, so a resumed run is the same run
# (except data_dir: the same data may have moved).
RUN_ARGS = ("init_from", "dataset", "data_dir", "e2e_text", "train_examples", "tuning_mode", "prefix_len", "mid_dim",
            "variant", "reparam", "prefix_dropout", "init_text", "positions_from_zero", "top_blocks", "adapter_dim",
            "lora_rank", "lora_alpha", "batch_size", "learning_rate", "weight_decay", "warmup_iters", "epochs",
            "max_iters", "grad_clip", "seed", "loss_reduction", "grad_accum")
# The file each kind of method exports at the end; "_best" is inserted before the suffix for the best one.
EXPORTS = {"prefix": "prefix.safetensors", "finetune": "model", "finetune-top": "tuned.safetensors",
           "adapter": "tuned.safetensors", "lora": "tuned.safetensors"}
RUN_FILES = ["config.json", "log.jsonl", "ckpt.pt", "eval"]  # besides the exports; sample.py writes eval/


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init_from", default="gpt2", help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a checkpoint dir")
    p.add_argument("--dataset", default="e2e", choices=sorted(PAPER), help="the table-to-text dataset")
    p.add_argument("--data_dir", default=None, help="a local copy of the dataset (E2E: the zip or its CSVs; default: download E2E)")
    p.add_argument("--e2e_text", default="official", choices=TEXT_FORMS,
                   help="E2E references as released, or PTB-tokenized as the authors trained on them")
    p.add_argument("--train_examples", type=int, default=None,
                   help="train on a random subset of this many (table, text) pairs, drawn from --seed (low-data runs)")
    p.add_argument("--tuning_mode", default="prefix", choices=["prefix", *BASELINES],
                   help="prefix-tuning, or a baseline: fine-tuning, its top blocks only, adapters, LoRA")
    p.add_argument("--prefix_len", type=int, default=None, help="P: the number of prefix positions (default: the authors', 10 for E2E and 5 for WebNLG)")
    p.add_argument("--mid_dim", type=int, default=512, help="the reparameterization MLP's width k")
    p.add_argument("--variant", default="prefix", choices=VARIANTS, help="the method or one of its ablations")
    p.add_argument("--reparam", action=argparse.BooleanOptionalAction, default=True, help="P = MLP(P')")
    p.add_argument("--prefix_dropout", type=float, default=0.0, help="dropout on the prefix's keys and values")
    p.add_argument("--init_text", default=None, help='start from real words\' activations, e.g. "table-to-text:" (read after a space)')
    p.add_argument("--positions_from_zero", action="store_true", help="number real tokens from 0, not from P")
    p.add_argument("--top_blocks", type=int, default=2, help="finetune-top: how many of the top blocks train")
    p.add_argument("--adapter_dim", type=int, default=100, help="adapter: the bottleneck width (the authors' 100)")
    p.add_argument("--lora_rank", type=int, default=4, help="lora: the rank r of B·A")
    p.add_argument("--lora_alpha", type=float, default=8.0, help="lora: the update is scaled by alpha / r")
    p.add_argument("--batch_size", type=int, default=None, help="rows per process (default: the paper's, 10 for E2E and 5 for WebNLG)")
    p.add_argument("--learning_rate", type=float, default=None, help="peak learning rate (default: the paper's, 8e-5 for E2E and 5e-5 for WebNLG)")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW's weight decay")
    p.add_argument("--warmup_iters", type=int, default=0, help="linear warmup before the linear decay")
    p.add_argument("--epochs", type=float, default=None, help="passes over the training data (default: the paper's 5)")
    p.add_argument("--max_iters", type=int, default=None, help="stop earlier than --epochs (the smaller wins)")
    p.add_argument("--stop_at", type=int, default=None,
                   help="pause at this iteration, checkpointed, on the same schedule; --resume goes on (in segments)")
    p.add_argument("--grad_accum", type=int, default=1,
                   help="micro-batches per iteration: the global batch is batch_size x processes x grad_accum")
    p.add_argument("--loss_reduction", default=None, choices=sorted(LOSS_NAMES),
                   help="sentence: each text's token losses summed, averaged over the batch; token: the mean over "
                        "target tokens (default: the authors', sentence for prefix-tuning, their objective_mode=1, "
                        "and token for the baselines, whose GPT-2 computes its own loss)")
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this")
    p.add_argument("--eval_interval", type=int, default=500, help="iterations between validation and checkpoint")
    p.add_argument("--eval_iters", type=int, default=0,
                   help="validation batches per evaluation (0: the whole dev split, which picks the best export)")
    p.add_argument("--log_interval", type=int, default=10, help="iterations between progress lines")
    p.add_argument("--out_dir", default="out", help="where checkpoints, exports and log.jsonl go")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on a GPU that supports it, else float32")
    p.add_argument("--seed", type=int, default=1337, help="fixes the initial prefix and the data order")
    p.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its ckpt.pt")
    p.add_argument("--overwrite", action="store_true", help="start a new run in an --out_dir that holds one, "
                                                             "removing the old run's files first")
    args = p.parse_args(argv)
    for name, value in PAPER[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.loss_reduction is None:
        args.loss_reduction = "sentence" if args.tuning_mode == "prefix" else "token"
    check_ranges(args, positive=("prefix_len", "batch_size", "mid_dim", "eval_interval", "log_interval", "max_iters",
                                  "epochs", "learning_rate", "grad_clip", "train_examples", "top_blocks",
                                  "adapter_dim", "lora_rank", "lora_alpha", "grad_accum"),
                 at_least_zero=("warmup_iters", "eval_iters", "weight_decay"))
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out_dir and --overwrite replaces it; give one of them")
    if args.e2e_text != "official" and args.dataset != "e2e":
        raise UserError(f"--e2e_text {args.e2e_text} rewrites E2E references; --dataset {args.dataset} has its own")
    if not 0 <= args.prefix_dropout < 1:
        raise UserError(f"--prefix_dropout must be at least 0 and below 1, got {args.prefix_dropout}")
    if args.tuning_mode != "prefix" and (args.variant != "prefix" or args.init_text or args.positions_from_zero):
        raise UserError(f"--variant, --init_text and --positions_from_zero shape a prefix; --tuning_mode "
                        f"{args.tuning_mode} has none")
    if args.variant == "infix" and args.positions_from_zero:
        raise UserError("--positions_from_zero numbers the tokens after a prefix; an infix follows the table, "
                        "whose positions it continues")
    return args


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()
    out_dir = Path(args.out_dir)
    # ---- distributed (torchrun sets RANK), device, precision --------------------------------------------------
    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    master = rank == 0
    checkpoint = open_run_folder(args, out_dir, argv, master)  # a resumed run's state, or None for a new run
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    if checkpoint is not None and len(checkpoint["rng"]) != world:
        raise UserError(f"the run in {out_dir} was trained by {len(checkpoint['rng'])} process(es); resume it with "
                        f"as many (this is {world}), so that its data order and dropout carry on")
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    say = print if master else (lambda *a, **k: None)
    dtype = pick_dtype(args.dtype, device)
    mixed_precision = autocast(device, dtype)
    torch.manual_seed(args.seed)  # the same initial prefix everywhere (DDP also broadcasts rank 0's)

    config, tokenizer, train_data, val_data, model, method = build(args, device, checkpoint is None, say)
    # fused: one kernel for the whole update instead of a dozen passes per tensor (7x faster on the 2-core CPU)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay, fused=True)
    trainable = DistributedDataParallel(method) if ddp else method
    schedule = Schedule(len(train_data), args.batch_size, world, args.grad_accum, args.epochs, args.max_iters,
                        args.learning_rate, args.warmup_iters, args.seed)

    # ---- a new run claims its folder; a resumed one takes up its state ----------------------------------------
    run_id = checkpoint["run_id"] if checkpoint is not None else new_run_id()
    it, best_val = 0, float("inf")
    if checkpoint is not None:
        it, best_val = resume(checkpoint, out_dir, method, optimizer, device, rank, master)
        say(f"resuming at iteration {it} of {schedule.total_iters} (run {run_id})")
    elif master:
        start_run_folder(args, out_dir, run_id, config, schedule)
    log = RunLog(out_dir / "log.jsonl", run_id, enabled=master)
    say(f"training {schedule.total_iters} iterations ({schedule.steps_per_epoch} per epoch, global batch "
        f"{schedule.global_batch} = {args.batch_size} rows x {world} process(es) x {args.grad_accum} accumulation "
        f"step(s)) on {device}, {str(dtype).removeprefix('torch.')}; train loss: {LOSS_NAMES[args.loss_reduction]}, "
        f"val loss: per token")
    if it == 0:
        val = validation_loss(method, model, val_data, args, device, mixed_precision)
        say(f"iter 0: val loss {val:.4f}")
        log.write(iter=0, val_loss=val)

    # ---- the loop: batch, forward, backward, clip, step; log, validate and checkpoint now and then -------------
    interrupted = stop_on_ctrl_c()
    started, tokens_trained, targets_trained = time.time(), 0, 0
    window = Window(it)  # the progress line's rate: since the last line, evaluation pauses excluded
    finite = torch.ones((), dtype=torch.bool, device=device)  # checked where the loop talks, not every step
    method.train()
    end = schedule.total_iters if args.stop_at is None else min(args.stop_at, schedule.total_iters)
    while it < end:
        lr = schedule.learning_rate(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss_sum, token_loss_sum, n_targets = 0.0, 0.0, 0
        for micro in range(args.grad_accum):
            rows = schedule.rows(it, rank, micro)
            idx, targets = train_data.batch(rows)
            n = train_data.target_count(rows)  # counted on the host: the loop never waits for the device
            idx, targets = (t.to(device, non_blocking=True) for t in (idx, targets))
            # gradients are averaged across processes only after the last micro-batch
            with trainable.no_sync() if ddp and micro < args.grad_accum - 1 else nullcontext():
                with mixed_precision:
                    kv = trainable(idx.size(0))  # through DDP, so gradients are averaged across processes
                    token_mean = method.loss(model, idx, targets, kv)
                    loss = objective(token_mean, n, idx.size(0), args.loss_reduction) / args.grad_accum
                loss.backward()
            loss_sum, token_loss_sum = loss_sum + loss.detach(), token_loss_sum + token_mean.detach() * n
            n_targets, tokens_trained = n_targets + n, tokens_trained + idx.numel() * world
        targets_trained += n_targets * world
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.grad_clip)
        finite &= torch.isfinite(loss_sum) & torch.isfinite(grad_norm)
        optimizer.step()
        it += 1

        if it % args.log_interval == 0 or it == schedule.total_iters:
            check_finite(finite, it, loss_sum, grad_norm, out_dir)
            rate, eta = window.progress(it, tokens_trained, schedule.total_iters)
            say(f"iter {it}/{schedule.total_iters} | epoch {it / schedule.steps_per_epoch:.2f} | "
                f"loss {loss_sum.item():.4f} ({token_loss_sum.item() / n_targets:.4f} per token) | lr {lr:.2e} | "
                f"{rate:,.0f} tok/s | ETA {format_duration(eta)}")
            log.write(iter=it, epoch=it / schedule.steps_per_epoch, train_loss=loss_sum.item(),
                      train_loss_per_token=token_loss_sum.item() / n_targets, lr=lr, tokens_per_s=rate)
        if it % args.eval_interval == 0 or it == schedule.total_iters:
            check_finite(finite, it, loss_sum, grad_norm, out_dir)
            val = validation_loss(method, model, val_data, args, device, mixed_precision)
            improved, best_val = val < best_val, min(best_val, val)
            if improved and master:
                export(args, method, model, tokenizer, out_dir, run_id, best=True)
            say(f"iter {it}: val loss {val:.4f}" +
                (f" (best so far: {export_path(args, out_dir, best=True).name})" if improved else ""))
            log.write(iter=it, val_loss=val)
            save_checkpoint(out_dir, run_id, it, best_val, method, optimizer, args, config, device, ddp, world)
            window.pause_ends(tokens_trained)
        if interrupted:
            check_finite(finite, it, loss_sum, grad_norm, out_dir)
            save_checkpoint(out_dir, run_id, it, best_val, method, optimizer, args, config, device, ddp, world)
            say(f"interrupted at iteration {it}; continue with: python train.py --out_dir {out_dir} --resume")
            sys.exit(130)

    if it < schedule.total_iters:  # paused by --stop_at
        if it % args.eval_interval and (checkpoint is None or it > checkpoint["iter"]):  # not saved yet
            check_finite(finite, it, loss_sum, grad_norm, out_dir)
            save_checkpoint(out_dir, run_id, it, best_val, method, optimizer, args, config, device, ddp, world)
        say(f"paused at iteration {it} of {schedule.total_iters}; continue with: python train.py --out_dir "
            f"{out_dir} --resume")
    elif master:
        path = export(args, method, model, tokenizer, out_dir, run_id, best=False)
        say(f"done: {path} (best val loss {best_val:.4f} in {export_path(args, out_dir, best=True).name})\n"
            f"{format_duration(time.time() - started)} wall, {tokens_trained:,} tokens trained ({targets_trained:,} "
            f"with a loss), peak memory {peak_memory(device)}")
    if ddp:
        check_ranks_agree(method, world)
        dist.destroy_process_group()


# ---- the run folder ---------------------------------------------------------------------------------------------

def open_run_folder(args: argparse.Namespace, out_dir: Path, argv, master: bool) -> dict | None:
    """--resume: the checked ckpt.pt, whose settings the run adopts. A new run: None, once the master has made
    sure the folder holds no other run (refused if it is not empty; with --overwrite, the old run's files go)."""
    if not args.resume:
        if master:
            claim_out_dir(out_dir, [*EXPORTS.values(), *(best_name(name) for name in EXPORTS.values()), *RUN_FILES],
                          args.overwrite)
        return None
    if not (out_dir / "ckpt.pt").exists():
        raise UserError(f"--resume found no {out_dir / 'ckpt.pt'}; start without --resume, or point --out_dir at "
                        f"an earlier run")
    checkpoint = read_training_checkpoint(out_dir / "ckpt.pt")
    adopt_run_args(args, checkpoint["args"], argv)
    return checkpoint


def start_run_folder(args: argparse.Namespace, out_dir: Path, run_id: str, config: GPTConfig,
                     schedule: "Schedule") -> None:
    """config.json: the run's every setting after defaults, the GPT's config and what produced the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {"run_id": run_id, "args": vars(args), "model": asdict(config), "global_batch": schedule.global_batch,
                "total_iters": schedule.total_iters, "environment": environment()}
    with atomic_path(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


class RunLog:
    """log.jsonl: one JSON record per line (the curves), each stamped with the run id."""

    def __init__(self, path: Path, run_id: str, enabled: bool):
        self.path, self.run_id, self.enabled = path, run_id, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps({"run_id": self.run_id, **record}) + "\n")


def resume(checkpoint: dict, out_dir: Path, method, optimizer, device: torch.device, rank: int,
           master: bool) -> tuple[int, float]:
    """Put the run's state back (trained tensors, AdamW, every generator), cut the curve back to the checkpoint;
    return (iteration, best validation loss)."""
    restore_training_state(out_dir / "ckpt.pt", checkpoint, method, optimizer)
    torch.set_rng_state(checkpoint["rng"][rank])
    set_device_rng_state(device, checkpoint["device_rng"][rank])
    it = checkpoint["iter"]
    if master and (out_dir / "log.jsonl").exists():  # the curve goes on from the checkpoint: drop later lines
        kept = [line for line in open(out_dir / "log.jsonl") if logged_iter(line) <= it]
        with atomic_path(out_dir / "log.jsonl") as tmp:
            tmp.write_text("".join(kept))
    return it, checkpoint["best_val_loss"]


def save_checkpoint(out_dir: Path, run_id: str, it: int, best_val: float, method, optimizer,
                    args: argparse.Namespace, config: GPTConfig, device: torch.device, ddp: bool, world: int) -> None:
    """ckpt.pt: everything --resume needs to continue bit for bit, written whole or not at all."""
    # each process draws its own dropout masks: keep every one's generators, its device's too
    rng, device_rng = [torch.get_rng_state()], [device_rng_state(device)]
    if ddp:
        rng, device_rng = [None] * world, [None] * world
        dist.all_gather_object(rng, torch.get_rng_state())
        dist.all_gather_object(device_rng, device_rng_state(device))
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    state = {"run_id": run_id, "iter": it, "best_val_loss": best_val, "trained": method.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": rng, "device_rng": device_rng, "args": run_args(args),
             "config": asdict(config)}
    with atomic_path(out_dir / "ckpt.pt") as tmp:
        torch.save(state, tmp)


def device_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The accelerator's own generator, from which dropout there draws, keyed by its kind; none on a CPU."""
    if device.type == "cuda":
        return {"cuda": torch.cuda.get_rng_state(device)}
    if device.type == "mps":
        return {"mps": torch.mps.get_rng_state()}
    return {}


def set_device_rng_state(device: torch.device, state: dict[str, torch.Tensor]) -> None:
    """Restore the generator device_rng_state saved, when the run resumes on the same kind of device."""
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def stop_on_ctrl_c() -> list:
    """A list that becomes non-empty at the first Ctrl-C (the loop then saves and exits); a second one stops at
    once."""
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: (interrupted.append(True), signal.signal(signal.SIGINT, signal.SIG_DFL)))
    return interrupted


# ---- data, model, schedule, objective, validation -------------------------------------------------------------

def build(args: argparse.Namespace, device: torch.device, fresh: bool, say):
    """(config, tokenizer, train data, dev data, the frozen GPT, the method that trains), with everything a user
    can get wrong checked before the heavy work. A fresh run's prefix may start from --init_text's activations."""
    directory = checkpoint_dir(args.init_from)
    config = read_config(directory)
    tokenizer = get_tokenizer(directory)
    train_data, val_data = training_data(args, tokenizer, config)
    init_ids = init_text_ids(args, tokenizer)
    say(f"train: {train_data.describe()}\nval:   {val_data.describe()}")
    model = freeze(GPT.from_pretrained(str(directory)).to(device))
    gpt_parameters = sum(p.numel() for p in model.parameters())  # counted before a baseline adds its own
    method = build_method(args, model).to(device)
    if init_ids is not None and fresh:
        init_from_text(method, model, init_ids)
    say(parameter_report(method, model) if args.tuning_mode == "prefix" else method.report(gpt_parameters))
    return config, tokenizer, train_data, val_data, model, method


def training_data(args: argparse.Namespace, tokenizer, config: GPTConfig):
    """The training pairs (all, or --train_examples of them drawn from --seed) and the dev split, checked to fit
    the model's positions after the prefix."""
    train_data = tokenized_split(args.dataset, "train", tokenizer, args.data_dir, args.e2e_text)
    if args.train_examples is not None:
        if args.train_examples > len(train_data):
            raise UserError(f"--train_examples {args.train_examples} exceeds the {len(train_data):,} training pairs")
        train_data = train_data.random_subset(args.train_examples, args.seed)
    val_data = tokenized_split(args.dataset, "dev", tokenizer, args.data_dir, args.e2e_text)
    longest = max(train_data.longest, val_data.longest)
    if args.prefix_len + longest > config.block_size:
        raise UserError(f"a prefix of {args.prefix_len} plus the longest example ({longest} tokens) exceeds the "
                        f"model's {config.block_size} positions; use a shorter --prefix_len")
    return train_data, val_data


def init_text_ids(args: argparse.Namespace, tokenizer) -> list[int] | None:
    """--init_text's tokens, read as the authors read it: as a word inside a text, after a space."""
    if not args.init_text:
        return None
    ids = tokenizer.encode_ordinary(args.init_text if args.init_text.startswith(" ") else " " + args.init_text)
    if len(ids) != args.prefix_len:
        raise UserError(f"--init_text {args.init_text!r} is {len(ids)} tokens; use --prefix_len {len(ids)}")
    return ids


@functools.lru_cache(maxsize=1)
def epoch_order(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    return torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch)).numpy()


@dataclass(frozen=True)
class Schedule:
    """Which rows every iteration trains on, and at what learning rate. Both follow from (seed, iteration) alone,
    so a resumed run repeats them exactly."""
    n_examples: int
    batch_size: int         # rows of one micro-batch in one process
    world: int              # processes
    grad_accum: int         # micro-batches per iteration
    epochs: float
    max_iters: int | None
    peak_lr: float
    warmup_iters: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.global_batch)

    @property
    def total_iters(self) -> int:
        total = math.ceil(self.epochs * self.steps_per_epoch)
        return total if self.max_iters is None else min(total, self.max_iters)

    def rows(self, it: int, rank: int, micro: int) -> np.ndarray:
        """This process's rows for micro-batch `micro` of iteration `it`: a slice of the epoch's permutation
        (wrapping at its end); the iteration's global batch is the next global_batch rows of it."""
        epoch, step = divmod(it, self.steps_per_epoch)
        start = step * self.global_batch + (micro * self.world + rank) * self.batch_size
        return epoch_order(self.n_examples, self.seed, epoch)[np.arange(start, start + self.batch_size)
                                                               % self.n_examples]

    def learning_rate(self, it: int) -> float:
        """Linear warmup, then linear decay to zero at the last iteration (the paper's linear schedule)."""
        if it < self.warmup_iters:
            return self.peak_lr * (it + 1) / self.warmup_iters
        return self.peak_lr * (self.total_iters - it) / max(1, self.total_iters - self.warmup_iters)


def objective(token_mean: torch.Tensor, n_targets: int, n_rows: int, reduction: str) -> torch.Tensor:
    """The loss the optimizer follows, from the mean −log p over the batch's n_targets target tokens (eq. 3).

    sentence: each text's token losses summed, then averaged over the n_rows texts (the authors' objective_mode=1);
    token: the mean over target tokens.
    """
    return token_mean * (n_targets / n_rows) if reduction == "sentence" else token_mean


@torch.no_grad()
def validation_loss(method, model: GPT, val_data, args: argparse.Namespace, device: torch.device,
                    mixed_precision) -> float:
    """The mean loss per target token over the dev split (its first --eval_iters batches, if given)."""
    method.eval()
    n_batches = math.ceil(len(val_data) / args.batch_size)
    n_batches = min(n_batches, args.eval_iters) if args.eval_iters else n_batches
    total, count = torch.zeros((), device=device), 0
    for b in range(n_batches):
        rows = np.arange(b * args.batch_size, min((b + 1) * args.batch_size, len(val_data)))
        idx, targets = val_data.batch(rows)
        n = val_data.target_count(rows)
        with mixed_precision:
            total += method.loss(model, idx.to(device), targets.to(device)) * n
        count += n
    method.train()
    return total.item() / count


def check_finite(finite: torch.Tensor, it: int, loss: torch.Tensor, grad_norm: torch.Tensor, out_dir: Path) -> None:
    """Stop on a loss or gradient that was not finite since the last check (checked when the loop logs or saves,
    so that a GPU is not made to wait every step); the checkpoint on disk predates it."""
    if not finite:
        raise UserError(f"training diverged by iteration {it} (last loss {loss.item():.4g}, gradient norm "
                        f"{grad_norm.item():.4g}); the last good checkpoint {out_dir / 'ckpt.pt'} is intact: "
                        f"lower --learning_rate and --resume")


class Window:
    """The training rate since the last progress line, with the time spent validating and saving left out."""

    def __init__(self, it: int):
        self.it, self.tokens, self.time = it, 0, time.time()

    def progress(self, it: int, tokens: int, total_iters: int) -> tuple[float, float]:
        """(tokens per second, seconds left at this pace) since the last call, which this one ends."""
        now = time.time()
        elapsed = max(now - self.time, 1e-9)
        rate, eta = (tokens - self.tokens) / elapsed, elapsed / max(1, it - self.it) * (total_iters - it)
        self.it, self.tokens, self.time = it, tokens, now
        return rate, eta

    def pause_ends(self, tokens: int) -> None:
        """Validation and saving are over: the next rate starts counting here."""
        self.tokens, self.time = tokens, time.time()


# ---- the method and its exports ----------------------------------------------------------------------------

def build_method(args: argparse.Namespace, gpt: GPT) -> torch.nn.Module:
    """What --tuning_mode trains: a prefix (or one of its ablations), or a baseline inside the GPT."""
    if args.tuning_mode == "prefix":
        return build_prefix(args.variant, gpt, args.prefix_len, args.mid_dim, args.reparam, args.prefix_dropout,
                            args.positions_from_zero)
    if args.tuning_mode == "finetune-top" and args.top_blocks > gpt.config.n_layer:
        raise UserError(f"--top_blocks {args.top_blocks} exceeds the model's {gpt.config.n_layer} blocks")
    return build_baseline(args.tuning_mode, gpt, vars(args))


def best_name(name: str) -> str:
    """The best export's name: "_best" before the suffix (prefix_best.safetensors, model_best)."""
    return f"{Path(name).stem}_best{Path(name).suffix}"


def export_path(args: argparse.Namespace, out_dir: Path, best: bool) -> Path:
    name = EXPORTS[args.tuning_mode]
    return out_dir / (best_name(name) if best else name)


def export(args: argparse.Namespace, method, gpt: GPT, tokenizer, out_dir: Path, run_id: str, best: bool) -> Path:
    """Write what the method trained, and only that: P (no MLP), a baseline's tensors, or a whole fine-tuned GPT;
    each carries the run id and the data it was trained on."""
    path = export_path(args, out_dir, best)
    run = {"run_id": run_id, "dataset": args.dataset, "e2e_text": args.e2e_text}
    if args.tuning_mode == "prefix":
        save_prefix(method.export(), path, args.init_from, run)
    elif args.tuning_mode == "finetune":
        save_pretrained(gpt, path, tokenizer, run)
    else:
        save_tuned(method, path, args.tuning_mode, vars(args), args.init_from, run)
    return path


def logged_iter(line: str) -> float:
    """The iteration of a log.jsonl line; infinity for a line cut short by a crash, so that resuming drops it."""
    try:
        return json.loads(line)["iter"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")


def run_args(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in RUN_ARGS}


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


def check_ranks_agree(method: torch.nn.Module, world: int) -> None:
    """Every process must end with the same trained weights: DDP averaged the same gradients into each."""
    flat = torch.cat([p.detach().flatten() for p in method.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("the processes ended with different prefixes")
    if dist.get_rank() == 0:
        print(f"all {world} processes hold the same trained weights")


if __name__ == "__main__":
    main()
