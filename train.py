"""Prefix-tune a frozen GPT-2 on table-to-text (E2E, WebNLG, DART) or your own task, as nanoGPT's train.py.

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
from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from common import UserError, exit_on_user_error
from common.cli import ArgumentParser, autocast, check_ranges, pick_device, pick_dtype
from common.distributed import check_ranks_agree, rank_and_world, stop_on_ctrl_c
from common.memory import peak_memory, reuse_freed_memory
from common.progress import format_duration
from data import DATASETS, TEXT_FORMS, check_text_form, rows_that_fit, tokenized_splits
from model import GPT, GPTConfig
from model.cpu_kernels import use_cpu_kernels
from model.loading import checkpoint_dir, read_config
from model.tokenizer import get_tokenizer
from prefix import VARIANTS, freeze
from runs import Run, Schedule
from runs.methods import (METHODS, build_method, check_settings, default_loss_reduction, initialize,
                          positions_taken)

# The paper's table-to-text settings (Li & Liang 2021, §5 and Appendix A): AdamW, linear decay, MLP k = 512; the
# learning rate, batch, epochs and prefix length of each dataset are in its data module (data/datasets.py).
PAPER = {name: module.TRAINING for name, module in DATASETS.items()}
LOSS_NAMES = {"sentence": "summed over each text, averaged over texts", "token": "mean per target token"}
SPLITS = ("train", "dev")  # what training reads: it trains on one and picks the best export on the other


def per_dataset(setting: str) -> str:
    """A setting's default on each dataset, for its --help: '8e-05 for e2e, 5e-05 for webnlg, ...'."""
    return ", ".join(f"{training[setting]:g} for {name}" for name, training in PAPER.items())


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init_from", default="gpt2", help="gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a checkpoint dir")
    p.add_argument("--dataset", default="e2e", choices=list(PAPER), help="the table-to-text dataset, or jsonl: "
                   "your own task (docs/datasets.md)")
    p.add_argument("--data_dir", default=None,
                   help="a local copy of the dataset (E2E: the zip or its CSVs; default: download E2E)")
    p.add_argument("--skip_long_rows", action="store_true", help="leave out (and count) the training and dev rows "
                   "that do not fit the model's positions after the prefix, instead of refusing them")
    p.add_argument("--e2e_text", default="official", choices=TEXT_FORMS,
                   help="E2E references as released, or PTB-tokenized as the authors trained on them")
    p.add_argument("--train_examples", type=int, default=None,
                   help="train on a random subset of this many (table, text) pairs, drawn from --seed (low-data runs)")
    p.add_argument("--tuning_mode", default="prefix", choices=METHODS,
                   help="prefix-tuning, or a baseline: fine-tuning, its top blocks only, adapters, LoRA")
    p.add_argument("--prefix_len", type=int, default=None,
                   help=f"P: the number of prefix positions (default: {per_dataset('prefix_len')})")
    p.add_argument("--mid_dim", type=int, default=512, help="the reparameterization MLP's width k")
    p.add_argument("--variant", default="prefix", choices=VARIANTS, help="the method or one of its ablations")
    p.add_argument("--reparam", action=argparse.BooleanOptionalAction, default=True, help="P = MLP(P')")
    p.add_argument("--prefix_dropout", type=float, default=0.0, help="dropout on the prefix's keys and values")
    p.add_argument("--init_text", default=None,
                   help='start from real words\' activations, e.g. "table-to-text:" (read after a space)')
    p.add_argument("--positions_from_zero", action="store_true", help="number real tokens from 0, not from P")
    p.add_argument("--top_blocks", type=int, default=2, help="finetune-top: how many of the top blocks train")
    p.add_argument("--adapter_dim", type=int, default=100, help="adapter: the bottleneck width (the authors' 100)")
    p.add_argument("--lora_rank", type=int, default=4, help="lora: the rank r of B·A")
    p.add_argument("--lora_alpha", type=float, default=8.0, help="lora: the update is scaled by alpha / r")
    p.add_argument("--batch_size", type=int, default=None,
                   help=f"rows per process (default: {per_dataset('batch_size')})")
    p.add_argument("--learning_rate", type=float, default=None,
                   help=f"peak learning rate (default: {per_dataset('learning_rate')})")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW's weight decay")
    p.add_argument("--warmup_iters", type=int, default=0, help="linear warmup before the linear decay")
    p.add_argument("--epochs", type=float, default=None,
                   help=f"passes over the training data (default: {per_dataset('epochs')})")
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
    args.loss_reduction = args.loss_reduction or default_loss_reduction(args.tuning_mode)
    check_ranges(args, positive=("prefix_len", "batch_size", "mid_dim", "eval_interval", "log_interval", "max_iters",
                                  "epochs", "learning_rate", "grad_clip", "train_examples", "top_blocks",
                                  "adapter_dim", "lora_rank", "lora_alpha", "grad_accum"),
                 at_least_zero=("warmup_iters", "eval_iters", "weight_decay"))
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out_dir and --overwrite replaces it; give one of them")
    check_text_form(args.dataset, args.e2e_text)
    if not 0 <= args.prefix_dropout < 1:
        raise UserError(f"--prefix_dropout must be at least 0 and below 1, got {args.prefix_dropout}")
    check_settings(vars(args))
    return args


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    t = Trainer(args, argv)  # processes, device, the run folder, data, the frozen GPT, the method, the optimizer
    method, model, optimizer, schedule, data = t.method, t.model, t.optimizer, t.schedule, t.train_data
    it, best_val = t.start()  # 0 after a first validation, or where the resumed run's checkpoint left off

    # ---- the loop: batch, forward, backward, clip, step; log, validate and checkpoint now and then -------------
    interrupted = stop_on_ctrl_c()
    meter = Meter(it, t.device, t.world)
    end = schedule.total_iters if args.stop_at is None else min(args.stop_at, schedule.total_iters)
    method.train()
    while it < end:
        lr = schedule.learning_rate(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        for micro in range(args.grad_accum):
            rows = schedule.rows(it, t.rank, micro)
            idx, targets = data.batch(rows)
            n = data.target_count(rows)  # counted on the host: the loop never waits for the device
            idx, targets = idx.to(t.device, non_blocking=True), targets.to(t.device, non_blocking=True)
            with t.no_sync(micro):
                with t.mixed_precision:
                    kv = t.trainable(idx.size(0))  # through DDP, so gradients are averaged across processes
                    token_mean = method.loss(model, idx, targets, kv)
                    loss = objective(token_mean, n, idx.size(0), args.loss_reduction) / args.grad_accum
                loss.backward()
            meter.add(loss, token_mean, n, idx.numel())
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.grad_clip)
        meter.step(grad_norm)
        optimizer.step()
        it += 1

        if it % args.log_interval == 0 or it == schedule.total_iters:
            t.log_progress(it, lr, meter)
        if it % args.eval_interval == 0 or it == schedule.total_iters:
            best_val = t.evaluate(it, best_val, meter)
        if interrupted:
            t.save(it, best_val, meter)
            t.say(f"interrupted at iteration {it}; continue with: python train.py --out_dir {t.run.out_dir} --resume")
            sys.exit(130)
    t.finish(it, best_val, meter)


# ---- setting up, and what the loop does now and then ----------------------------------------------------------

class Trainer:
    """What the loop trains with, and the steps it takes now and then: start, log, evaluate, save, finish."""

    def __init__(self, args: argparse.Namespace, argv):
        """Processes (torchrun sets RANK), device, precision, the run folder (a resumed run takes its settings from
        its ckpt.pt), the data (checked before the weights load), the frozen GPT and the method (a fresh run's
        prefix may start from --init_text's activations), the optimizer and the schedule."""
        reuse_freed_memory()
        self.args = args
        self.rank, self.world, local_rank = rank_and_world()
        self.device = device = pick_device(args.device, local_rank)
        self.run = run = Run.open(args, argv, device, self.rank, self.world)
        if self.world > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.say = say = print if run.master else (lambda *a, **k: None)
        self.dtype = pick_dtype(args.dtype, device)
        self.mixed_precision = autocast(device, self.dtype)
        torch.manual_seed(args.seed)  # the same initial prefix everywhere (DDP also broadcasts rank 0's)
        directory = checkpoint_dir(args.init_from)
        self.config, self.tokenizer = read_config(directory), get_tokenizer(directory)
        self.train_data, self.val_data = training_data(args, self.tokenizer, self.config)
        say(f"train: {self.train_data.describe()}\nval:   {self.val_data.describe()}")
        self.model = model = freeze(GPT.from_pretrained(str(directory)).to(device))
        gpt_parameters = sum(p.numel() for p in model.parameters())  # counted before a baseline adds its own
        self.method = method = build_method(vars(args), model).to(device)
        use_cpu_kernels(model, method)
        if run.checkpoint is None:
            initialize(method, model, vars(args), self.tokenizer)
        say(method.report(gpt_parameters))
        self.trainable = DistributedDataParallel(method) if self.world > 1 else method
        # fused: one kernel for the whole update instead of a dozen passes per tensor (7x faster on the 2-core CPU)
        self.optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad],
                                           lr=args.learning_rate, weight_decay=args.weight_decay, fused=True)
        self.schedule = Schedule(len(self.train_data), args.batch_size, self.world, args.grad_accum, args.epochs,
                                 args.max_iters, args.learning_rate, args.warmup_iters, args.seed)

    def start(self) -> tuple[int, float]:
        """(iteration, best dev loss): a resumed run's, or 0 after validating the untrained method."""
        run = self.run
        if run.checkpoint:
            it, best_val = run.restore(self.method, self.optimizer)
            self.say(f"resuming at iteration {it} of {self.schedule.total_iters} (run {run.run_id})")
        else:
            it, best_val = 0, float("inf")
            run.start(self.config, global_batch=self.schedule.global_batch, total_iters=self.schedule.total_iters)
        s, args = self.schedule, self.args
        self.say(f"training {s.total_iters} iterations ({s.steps_per_epoch} per epoch, global batch {s.global_batch} "
                 f"= {args.batch_size} rows x {self.world} process(es) x {args.grad_accum} accumulation step(s)) on "
                 f"{self.device}, {str(self.dtype).removeprefix('torch.')}; train loss: "
                 f"{LOSS_NAMES[args.loss_reduction]}, val loss: per token")
        if it == 0:
            val = self.validation_loss()
            self.say(f"iter 0: val loss {val:.4f}")
            run.log(iter=0, val_loss=val)
        return it, best_val

    def no_sync(self, micro: int):
        """DDP averages gradients across processes only after the last micro-batch of an iteration."""
        return self.trainable.no_sync() if self.world > 1 and micro < self.args.grad_accum - 1 else nullcontext()

    def log_progress(self, it: int, lr: float, meter: Meter) -> None:
        meter.check_finite(it, self.run)
        rate, eta = meter.progress(it, self.schedule.total_iters)
        loss, per_token = meter.loss.item(), meter.token_loss.item() / meter.n_targets
        epoch = it / self.schedule.steps_per_epoch
        self.say(f"iter {it}/{self.schedule.total_iters} | epoch {epoch:.2f} | loss {loss:.4f} ({per_token:.4f} per "
                 f"token) | lr {lr:.2e} | {rate:,.0f} tok/s | ETA {format_duration(eta)}")
        self.run.log(iter=it, epoch=epoch, train_loss=loss, train_loss_per_token=per_token, lr=lr, tokens_per_s=rate)

    def evaluate(self, it: int, best_val: float, meter: Meter) -> float:
        """Validate, export the method if it is the best so far, checkpoint; the best dev loss."""
        meter.check_finite(it, self.run)
        val = self.validation_loss()
        improved, best_val = val < best_val, min(best_val, val)
        if improved:
            self.run.export(self.method, self.model, self.tokenizer, best=True)
        self.say(f"iter {it}: val loss {val:.4f}" +
                 (f" (best so far: {self.run.export_path(best=True).name})" if improved else ""))
        self.run.log(iter=it, val_loss=val)
        self.run.save_checkpoint(it, best_val, self.method, self.optimizer, self.config)
        meter.pause_ends()
        return best_val

    def save(self, it: int, best_val: float, meter: Meter) -> None:
        meter.check_finite(it, self.run)
        self.run.save_checkpoint(it, best_val, self.method, self.optimizer, self.config)

    def finish(self, it: int, best_val: float, meter: Meter) -> None:
        """Paused by --stop_at (checkpointed, if the last evaluation did not), or done: the final export."""
        run, total_iters = self.run, self.schedule.total_iters
        if it < total_iters:
            if it % self.args.eval_interval and (run.checkpoint is None or it > run.checkpoint["iter"]):
                self.save(it, best_val, meter)
            self.say(f"paused at iteration {it} of {total_iters}; continue with: python train.py --out_dir "
                     f"{run.out_dir} --resume")
        else:
            path = run.export(self.method, self.model, self.tokenizer, best=False)
            self.say(f"done: {path} (best val loss {best_val:.4f} in {run.export_path(best=True).name})\n"
                     f"{format_duration(time.time() - meter.started)} wall, {meter.tokens:,} tokens trained "
                     f"({meter.targets:,} with a loss), peak memory {peak_memory(self.device)}")
        if self.world > 1:
            check_ranks_agree(self.method, self.world)
            dist.destroy_process_group()

    @torch.no_grad()
    def validation_loss(self) -> float:
        """The mean loss per target token over the dev split (its first --eval_iters batches, if given)."""
        self.method.eval()
        data, batch_size = self.val_data, self.args.batch_size
        n_batches = math.ceil(len(data) / batch_size)
        n_batches = min(n_batches, self.args.eval_iters) if self.args.eval_iters else n_batches
        total, count = torch.zeros((), device=self.device), 0
        for b in range(n_batches):
            rows = np.arange(b * batch_size, min((b + 1) * batch_size, len(data)))
            idx, targets = data.batch(rows)
            n = data.target_count(rows)
            with self.mixed_precision:
                total += self.method.loss(self.model, idx.to(self.device), targets.to(self.device)) * n
            count += n
        self.method.train()
        return total.item() / count


# ---- data, objective, the loop's figures ----------------------------------------------------------------------

def training_data(args: argparse.Namespace, tokenizer, config: GPTConfig):
    """The training pairs (all, or --train_examples of them drawn from --seed) and the dev split, checked to fit
    the model's positions after the prefix."""
    splits = tokenized_splits(args.dataset, SPLITS, tokenizer, args.data_dir, args.e2e_text)
    train_data, val_data = (rows_that_fit(rows, positions_taken(vars(args)), config.block_size, args.skip_long_rows,
                                          args.dataset, split, args.data_dir, args.e2e_text)
                            for split, rows in zip(SPLITS, splits))
    if args.train_examples is not None:
        if args.train_examples > len(train_data):
            raise UserError(f"--train_examples {args.train_examples} exceeds the {len(train_data):,} training pairs")
        train_data = train_data.random_subset(args.train_examples, args.seed)
    return train_data, val_data


def objective(token_mean: torch.Tensor, n_targets: int, n_rows: int, reduction: str) -> torch.Tensor:
    """The loss the optimizer follows, from the mean −log p over the batch's n_targets target tokens (eq. 2).

    sentence: each text's token losses summed, then averaged over the n_rows texts (the authors' objective_mode=1);
    token: the mean over target tokens.
    """
    return token_mean * (n_targets / n_rows) if reduction == "sentence" else token_mean


class Meter:
    """The loop's figures: the last iteration's losses, the tokens trained, the rate since the last progress line
    (the time spent validating and saving left out), and whether every loss and gradient so far was finite."""

    def __init__(self, it: int, device: torch.device, world: int):
        self.world, self.started = world, time.time()
        self.tokens, self.targets = 0, 0  # over all processes
        self.finite = torch.ones((), dtype=torch.bool, device=device)  # checked where the loop talks, not every step
        self.window_it, self.window_tokens, self.window_time = it, 0, self.started
        self.running_loss, self.running_token_loss, self.running_targets = 0.0, 0.0, 0  # the iteration being summed

    def add(self, loss: torch.Tensor, token_mean: torch.Tensor, n_targets: int, tokens: int) -> None:
        """A micro-batch of this process: its share of the objective, and its mean loss over n_targets tokens."""
        self.running_loss = self.running_loss + loss.detach()
        self.running_token_loss = self.running_token_loss + token_mean.detach() * n_targets
        self.running_targets, self.tokens = self.running_targets + n_targets, self.tokens + tokens * self.world

    def step(self, grad_norm: torch.Tensor) -> None:
        """The iteration's gradient is in: its figures kept for the next progress line, the sums started afresh."""
        self.loss, self.token_loss, self.n_targets, self.grad_norm = (self.running_loss, self.running_token_loss,
                                                                      self.running_targets, grad_norm)
        self.running_loss, self.running_token_loss, self.running_targets = 0.0, 0.0, 0
        self.targets += self.n_targets * self.world
        self.finite &= torch.isfinite(self.loss) & torch.isfinite(grad_norm)

    def check_finite(self, it: int, run: Run) -> None:
        """Stop on a loss or gradient that was not finite since the last check (made when the loop logs or saves,
        so that a GPU is not made to wait every step); the checkpoint on disk predates it."""
        if not self.finite:
            raise UserError(f"training diverged by iteration {it} (last loss {self.loss.item():.4g}, gradient norm "
                            f"{self.grad_norm.item():.4g}); the last good checkpoint {run.checkpoint_path} is "
                            f"intact: lower --learning_rate and --resume")

    def progress(self, it: int, total_iters: int) -> tuple[float, float]:
        """(tokens per second, seconds left at this pace) since the last call or pause, which this call ends."""
        now = time.time()
        elapsed = max(now - self.window_time, 1e-9)
        rate = (self.tokens - self.window_tokens) / elapsed
        eta = elapsed / max(1, it - self.window_it) * (total_iters - it)
        self.window_it, self.window_tokens, self.window_time = it, self.tokens, now
        return rate, eta

    def pause_ends(self) -> None:
        """Validation and saving are over: the next rate starts counting here."""
        self.window_tokens, self.window_time = self.tokens, time.time()


if __name__ == "__main__":
    main()
