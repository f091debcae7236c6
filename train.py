"""Prefix-tune a frozen GPT-2 on table-to-text (E2E or WebNLG), in the spirit of nanoGPT's train.py.

    python train.py --prefix_len 10                       # E2E with the paper's settings, on gpt2
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
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from baselines import BASELINES, build_baseline, save_tuned
from common import UserError, atomic_path, exit_on_user_error
from common.cli import ArgumentParser, autocast, check_ranges, pick_device, pick_dtype
from common.memory import reuse_freed_memory
from data import IGNORE_INDEX, TEXT_FORMS, tokenized_split
from model import GPT
from model.loading import checkpoint_dir, read_config, save_pretrained
from model.tokenizer import get_tokenizer
from prefix import VARIANTS, build_prefix, freeze, init_from_text, parameter_report, save_prefix
from prefix.artifact import read_training_checkpoint, restore_training_state

# The paper's table-to-text settings (Li & Liang 2021, Table 6 and §5): AdamW, linear decay, MLP k = 512.
PAPER = {"e2e": dict(learning_rate=8e-5, batch_size=10, epochs=5),
         "webnlg": dict(learning_rate=5e-5, batch_size=5, epochs=5)}
# Arguments that define the run; --resume refuses to change them, so a resumed run is the same run
# (except data_dir: the same data may have moved).
RUN_ARGS = ("init_from", "dataset", "data_dir", "e2e_text", "train_examples", "tuning_mode", "prefix_len", "mid_dim",
            "variant", "reparam", "prefix_dropout", "init_text", "positions_from_zero", "top_blocks", "adapter_dim",
            "lora_rank", "lora_alpha", "batch_size", "learning_rate", "weight_decay", "warmup_iters", "epochs",
            "max_iters", "grad_clip", "seed")
# The file each kind of method exports at the end; "_best" is inserted before the suffix for the best one.
EXPORTS = {"prefix": "prefix.safetensors", "finetune": "model", "finetune-top": "tuned.safetensors",
           "adapter": "tuned.safetensors", "lora": "tuned.safetensors"}


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
    p.add_argument("--prefix_len", type=int, default=10, help="P: the number of prefix positions")
    p.add_argument("--mid_dim", type=int, default=512, help="the reparameterization MLP's width k")
    p.add_argument("--variant", default="prefix", choices=VARIANTS, help="the method or one of its ablations")
    p.add_argument("--reparam", action=argparse.BooleanOptionalAction, default=True, help="P = MLP(P')")
    p.add_argument("--prefix_dropout", type=float, default=0.0, help="dropout on the prefix's keys and values")
    p.add_argument("--init_text", default=None, help='start from real words\' activations, e.g. "table-to-text:"')
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
    p.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this")
    p.add_argument("--eval_interval", type=int, default=500, help="iterations between validation and checkpoint")
    p.add_argument("--eval_iters", type=int, default=100, help="validation batches per evaluation (0: all)")
    p.add_argument("--log_interval", type=int, default=10, help="iterations between progress lines")
    p.add_argument("--out_dir", default="out", help="where checkpoints, exports and log.jsonl go")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on a GPU that supports it, else float32")
    p.add_argument("--seed", type=int, default=1337, help="fixes the initial prefix and the data order")
    p.add_argument("--resume", action="store_true", help="continue the run in --out_dir from its ckpt.pt")
    args = p.parse_args(argv)
    for name, value in PAPER[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    check_ranges(args, positive=("prefix_len", "batch_size", "mid_dim", "eval_interval", "log_interval", "max_iters",
                                  "epochs", "learning_rate", "grad_clip", "train_examples", "top_blocks",
                                  "adapter_dim", "lora_rank", "lora_alpha"),
                 at_least_zero=("warmup_iters", "eval_iters", "weight_decay"))
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
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a directory")
    checkpoint = None
    if args.resume:
        if not (out_dir / "ckpt.pt").exists():
            raise UserError(f"--resume found no {out_dir / 'ckpt.pt'}; start without --resume, or point --out_dir at "
                            f"an earlier run")
        checkpoint = read_training_checkpoint(out_dir / "ckpt.pt")
        adopt_run_args(args, checkpoint["args"], argv)

    # ---- distributed (torchrun sets RANK), device, precision --------------------------------------------------
    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    if checkpoint is not None and len(checkpoint["rng"]) != world:
        raise UserError(f"the run in {out_dir} was trained by {len(checkpoint['rng'])} process(es); resume it with "
                        f"as many (this is {world}), so that its data order and dropout carry on")
    if ddp:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    dtype = pick_dtype(args.dtype, device)
    mixed_precision = autocast(device, dtype)
    torch.manual_seed(args.seed)  # the same initial prefix everywhere (DDP also broadcasts rank 0's)

    # ---- data and model: everything a user can get wrong is checked before the heavy work ---------------------
    directory = checkpoint_dir(args.init_from)
    config = read_config(directory)
    tokenizer = get_tokenizer(directory)
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
    init_ids = tokenizer.encode_ordinary(args.init_text) if args.init_text else None
    if init_ids is not None and len(init_ids) != args.prefix_len:
        raise UserError(f"--init_text {args.init_text!r} is {len(init_ids)} tokens; use --prefix_len {len(init_ids)}")
    say(f"train: {train_data.describe()}\nval:   {val_data.describe()}")

    model = freeze(GPT.from_pretrained(str(directory)).to(device))
    gpt_parameters = sum(p.numel() for p in model.parameters())  # counted before a baseline adds its own
    method = build_method(args, model).to(device)
    if init_ids is not None and checkpoint is None:
        init_from_text(method, model, init_ids)
    say(parameter_report(method, model) if args.tuning_mode == "prefix" else method.report(gpt_parameters))
    # fused: one kernel for the whole update instead of a dozen passes per tensor (7x faster on the 2-core CPU)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=args.learning_rate,
                                  weight_decay=args.weight_decay, fused=True)
    trainable = DistributedDataParallel(method) if ddp else method

    # ---- the schedule: every iteration's batch follows from (seed, iteration), so a resumed run repeats it ----
    global_batch = args.batch_size * world
    steps_per_epoch = math.ceil(len(train_data) / global_batch)
    total_iters = math.ceil(args.epochs * steps_per_epoch)
    if args.max_iters is not None:
        total_iters = min(total_iters, args.max_iters)

    @functools.lru_cache(maxsize=1)
    def epoch_order(epoch: int) -> torch.Tensor:
        return torch.randperm(len(train_data), generator=torch.Generator().manual_seed(args.seed + epoch))

    def batch_for(it: int):
        """This process's rows of iteration `it`: a slice of the epoch's permutation (wrapping at its end)."""
        epoch, step = divmod(it, steps_per_epoch)
        order = epoch_order(epoch)
        start = step * global_batch + rank * args.batch_size
        rows = order[torch.arange(start, start + args.batch_size) % len(train_data)]
        return (t.to(device) for t in train_data.batch(rows))

    def learning_rate(it: int) -> float:
        """Linear warmup, then linear decay to zero at the last iteration (the paper's linear schedule)."""
        if it < args.warmup_iters:
            return args.learning_rate * (it + 1) / args.warmup_iters
        return args.learning_rate * (total_iters - it) / max(1, total_iters - args.warmup_iters)

    @torch.no_grad()
    def validation_loss() -> float:
        """Mean loss per target token over the first --eval_iters batches of the dev split (a fixed order)."""
        method.eval()
        n_batches = math.ceil(len(val_data) / args.batch_size)
        n_batches = min(n_batches, args.eval_iters) if args.eval_iters else n_batches
        total, count = 0.0, 0
        for b in range(n_batches):
            idx, targets = (t.to(device) for t in val_data.batch(range(b * args.batch_size,
                                                                      min((b + 1) * args.batch_size, len(val_data)))))
            with mixed_precision:
                loss = method.loss(model, idx, targets)
            n = int((targets != IGNORE_INDEX).sum())
            total, count = total + loss.item() * n, count + n
        method.train()
        return total / count

    it, best_val = 0, float("inf")
    if checkpoint is not None:
        restore_training_state(out_dir / "ckpt.pt", checkpoint, method, optimizer)
        it, best_val = checkpoint["iter"], checkpoint["best_val_loss"]
        torch.set_rng_state(checkpoint["rng"][rank])
        if device.type == "cuda":  # prefix dropout on a GPU draws from the GPU's own generator
            torch.cuda.set_rng_state(checkpoint["cuda_rng"][rank], device)
        if master and (out_dir / "log.jsonl").exists():  # the curve goes on from the checkpoint: drop later lines
            kept = [line for line in open(out_dir / "log.jsonl") if logged_iter(line) <= it]
            with atomic_path(out_dir / "log.jsonl") as tmp:
                tmp.write_text("".join(kept))
        say(f"resuming at iteration {it} of {total_iters}")

    def save_training_state():
        # each process draws its own dropout masks: keep every one's generators, the GPU's too when it has one
        cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
        rng, cuda_rng = [torch.get_rng_state()], [cuda_state]
        if ddp:
            rng, cuda_rng = [None] * world, [None] * world
            dist.all_gather_object(rng, torch.get_rng_state())
            dist.all_gather_object(cuda_rng, cuda_state)
        if master:
            state = {"iter": it, "best_val_loss": best_val, "trained": method.state_dict(),
                     "optimizer": optimizer.state_dict(), "rng": rng, "cuda_rng": cuda_rng, "args": run_args(args),
                     "config": asdict(config)}
            with atomic_path(out_dir / "ckpt.pt") as tmp:
                torch.save(state, tmp)

    def log(record: dict):
        if master:
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # Ctrl-C finishes the current step, saves, and exits; a second Ctrl-C stops at once.
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: (interrupted.append(True), signal.signal(signal.SIGINT, signal.SIG_DFL)))

    out_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None and master:
        (out_dir / "log.jsonl").unlink(missing_ok=True)  # a new run's curve, not appended to an earlier run's
    say(f"training {total_iters} iterations ({steps_per_epoch} per epoch, global batch {global_batch}) on {device}, "
        f"{str(dtype).removeprefix('torch.')}")
    if it == 0:
        val = validation_loss()
        say(f"iter 0: val loss {val:.4f}")
        log({"iter": 0, "val_loss": val})
    method.train()
    started, tokens_seen, start_it = time.time(), 0, it
    while it < total_iters:
        lr = learning_rate(it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx, targets = batch_for(it)
        with mixed_precision:
            kv = trainable(idx.size(0))  # through DDP, so gradients are averaged across processes
            loss = method.loss(model, idx, targets, kv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], args.grad_clip)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise UserError(f"training diverged at iteration {it} (loss {loss.item():.4g}, gradient norm "
                            f"{grad_norm.item():.4g}); the last good checkpoint {out_dir / 'ckpt.pt'} is intact: "
                            f"lower --learning_rate and --resume")
        optimizer.step()
        it += 1
        tokens_seen += idx.numel() * world

        if it % args.log_interval == 0 or it == total_iters:
            elapsed = time.time() - started
            rate = tokens_seen / elapsed
            eta = elapsed / (it - start_it) * (total_iters - it)
            say(f"iter {it}/{total_iters} | epoch {it / steps_per_epoch:.2f} | loss {loss.item():.4f} | lr {lr:.2e} | "
                f"{rate:,.0f} tok/s | ETA {format_duration(eta)}")
            log({"iter": it, "epoch": it / steps_per_epoch, "train_loss": loss.item(), "lr": lr, "tokens_per_s": rate})
        if it % args.eval_interval == 0 or it == total_iters:
            val = validation_loss()
            improved = val < best_val
            best_val = min(best_val, val)
            if improved and master:
                export(args, method, model, tokenizer, out_dir, best=True)
            say(f"iter {it}: val loss {val:.4f}" +
                (f" (best so far: {export_path(args, out_dir, best=True).name})" if improved else ""))
            log({"iter": it, "val_loss": val})
            save_training_state()
        if interrupted:
            save_training_state()
            say(f"interrupted at iteration {it}; continue with: python train.py --out_dir {out_dir} --resume")
            sys.exit(130)

    if master:
        path = export(args, method, model, tokenizer, out_dir, best=False)
        say(f"done: {path} (best val loss {best_val:.4f} in {export_path(args, out_dir, best=True).name})")
    if ddp:
        check_ranks_agree(method, world)
        dist.destroy_process_group()


def build_method(args: argparse.Namespace, gpt: GPT) -> torch.nn.Module:
    """What --tuning_mode trains: a prefix (or one of its ablations), or a baseline inside the GPT."""
    if args.tuning_mode == "prefix":
        return build_prefix(args.variant, gpt, args.prefix_len, args.mid_dim, args.reparam, args.prefix_dropout,
                            args.positions_from_zero)
    if args.tuning_mode == "finetune-top" and args.top_blocks > gpt.config.n_layer:
        raise UserError(f"--top_blocks {args.top_blocks} exceeds the model's {gpt.config.n_layer} blocks")
    return build_baseline(args.tuning_mode, gpt, vars(args))


def export_path(args: argparse.Namespace, out_dir: Path, best: bool) -> Path:
    name = Path(EXPORTS[args.tuning_mode])
    return out_dir / (f"{name.stem}_best{name.suffix}" if best else name.name)


def export(args: argparse.Namespace, method, gpt: GPT, tokenizer, out_dir: Path, best: bool) -> Path:
    """Write what the method trained, and only that: P (no MLP), a baseline's tensors, or a whole fine-tuned GPT."""
    path = export_path(args, out_dir, best)
    if args.tuning_mode == "prefix":
        save_prefix(method.export(), path, args.init_from)
    elif args.tuning_mode == "finetune":
        save_pretrained(gpt, path, tokenizer)
    else:
        save_tuned(method, path, args.tuning_mode, vars(args), args.init_from)
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


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


if __name__ == "__main__":
    main()
