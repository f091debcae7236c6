"""Pretrain a small GPT-2 from scratch on this machine, for the miniature of the paper's tables.

    python -m experiments.pretrain_small --out_dir experiments/runs/small-gpt2     # ~22 min on 2 idle CPU cores

No pretrained GPT-2 can be downloaded here, and prefix-tuning can only steer a frozen LM toward what it already
does: a table-to-text prefix needs an LM that copies names from its context. So the corpus is made to teach
copying, without ever showing an E2E table:
  - E2E training references, all texts of one table as one document (names recur within a document);
  - WebNLG training pairs laid out as our training rows, ` {triples} <|endoftext|> {text} <|endoftext|>`
    (data-to-text in another format and domain);
  - repeated spans: a stretch of that text followed by itself (the second copy is predictable only by copying).
Held out: E2E dev references (the loss) and WebNLG dev texts, whose repeated spans give the copying measure:
top-1 accuracy on the second copy of a span the model has never seen.

The result is a Hugging Face GPT-2 checkpoint directory with its tokenizer files; `--init_from` takes it.
The training state is checkpointed, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from common import UserError, atomic_path, exit_on_user_error
from common.cli import ArgumentParser, check_ranges
from common.memory import reuse_freed_memory
from data import load_examples
from data.tokens import Sequences
from model import GPT, GPTConfig
from model.cpu_kernels import use_cpu_kernels
from model.loading import save_pretrained
from model.tokenizer import get_tokenizer

QUICK = dict(n_layer=2, n_head=2, n_embd=32, block_size=256, seq_len=32, batch_size=2, max_iters=4, eval_interval=2,
             corpus_docs=200)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", required=True, help="the checkpoint directory to write (its training state goes "
                                                    "beside it, in <out_dir>.state/)")
    p.add_argument("--e2e_dir", required=True, help="the E2E release (zip or CSVs)")
    p.add_argument("--webnlg_dir", required=True, help="the WebNLG 2017 XML folder")
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=128)
    p.add_argument("--block_size", type=int, default=256, help="the position table (training windows are 128)")
    p.add_argument("--seq_len", type=int, default=128, help="tokens per training window")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=2e-3, help="peak; cosine decay to a tenth of it")
    p.add_argument("--warmup_iters", type=int, default=200)
    p.add_argument("--max_iters", type=int, default=2000)
    p.add_argument("--eval_interval", type=int, default=250)
    p.add_argument("--corpus_docs", type=int, default=None, help="use only this many documents of each kind (tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings for tests: " + " ".join(
        f"--{k} {v}" for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    check_ranges(args, positive=("n_layer", "n_head", "n_embd", "block_size", "seq_len", "batch_size",
                                  "learning_rate", "max_iters", "eval_interval", "corpus_docs"),
                 at_least_zero=("warmup_iters",))
    if args.n_embd % args.n_head:
        raise UserError(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    if args.seq_len > args.block_size:
        raise UserError(f"--seq_len {args.seq_len} exceeds --block_size {args.block_size}")
    return args


def build_corpus(tokenizer, e2e_dir, webnlg_dir, seed: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """Token streams (documents joined by <|endoftext|>): "train", "val", and the held-out "copy_probe" spans."""
    rng = np.random.default_rng(seed)
    eot = tokenizer.eot_token
    e2e = [ex.references for ex in load_examples("e2e", "train", e2e_dir)][:limit]
    e2e_val = [ex.references for ex in load_examples("e2e", "dev", e2e_dir)][:limit]
    webnlg = [(ex.table, ref) for ex in load_examples("webnlg", "train", webnlg_dir, for_training=True)
              for ref in ex.references][:limit]
    webnlg_val = [ref for ex in load_examples("webnlg", "dev", webnlg_dir) for ref in ex.references][:limit]

    documents = [tokenizer.encode_ordinary(" " + " ".join(refs)) for refs in e2e]
    rows = Sequences.from_pairs(tokenizer, webnlg)
    documents += [list(rows[i][:-1]) for i in range(len(rows))]  # the row without its final EOT (added below)
    text = np.concatenate([np.asarray(d) for d in documents])
    documents += [repeated_span(text, rng) for _ in range(len(documents) // 4)]
    order = rng.permutation(len(documents))
    train = np.fromiter((t for i in order for t in (*documents[i], eot)), np.int32)
    val = np.fromiter((t for refs in e2e_val for t in (*tokenizer.encode_ordinary(" " + " ".join(refs)), eot)),
                      np.int32)
    held_out = np.concatenate([np.asarray(tokenizer.encode_ordinary(" " + ref)) for ref in webnlg_val])
    probe = np.stack([repeated_span(held_out, rng, length=16) for _ in range(256)]).astype(np.int32)
    return {"train": train, "val": val, "copy_probe": probe}


def repeated_span(text: np.ndarray, rng: np.random.Generator, length: int | None = None) -> list[int]:
    """A stretch of text followed by itself: [s ; s]."""
    length = length or int(rng.integers(8, 33))
    start = int(rng.integers(0, len(text) - length))
    span = text[start:start + length].tolist()
    return span + span


def windows(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, targets): next-token prediction over windows of the stream."""
    rows = torch.from_numpy(np.stack([stream[s:s + seq_len + 1] for s in starts]).astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(model: GPT, corpus: dict[str, np.ndarray], seq_len: int) -> dict[str, float]:
    """Loss per token on held-out E2E references, and top-1 accuracy on the second copy of held-out spans."""
    model.eval()
    val = corpus["val"]
    starts = np.arange(0, len(val) - seq_len - 1, seq_len)[:64]
    losses = [model(*windows(val, starts[i:i + 16], seq_len))[1].item() for i in range(0, len(starts), 16)]
    probe = torch.from_numpy(corpus["copy_probe"]).long()
    half = probe.size(1) // 2
    # positions half.. predict the second copy's tokens 1..; 32 rows at a time keeps the logits small
    predicted = torch.cat([model(rows[:, :-1])[0][:, half:].argmax(-1) for rows in probe.split(32)])
    copy_accuracy = (predicted == probe[:, half + 1:]).float().mean().item()
    model.train()
    return {"val_loss": float(np.mean(losses)), "copy_accuracy": copy_accuracy}


def learning_rate(it: int, args) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if it < args.warmup_iters:
        return args.learning_rate * (it + 1) / args.warmup_iters
    progress = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.learning_rate * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    reuse_freed_memory()
    out_dir, state_dir = Path(args.out_dir), Path(f"{args.out_dir}.state")
    torch.manual_seed(args.seed)
    tokenizer = get_tokenizer()
    corpus = build_corpus(tokenizer, args.e2e_dir, args.webnlg_dir, args.seed, args.corpus_docs)
    print(f"corpus: {len(corpus['train']):,} training tokens, {len(corpus['val']):,} validation tokens, "
          f"{len(corpus['copy_probe'])} held-out repeated spans")
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                       vocab_size=tokenizer.n_vocab)
    model = GPT(config)
    use_cpu_kernels(model)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices decay; biases and LayerNorms do not
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=args.learning_rate, betas=(0.9, 0.95), fused=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out_dir", "quick")}
    it, history = 0, []
    if (state_dir / "ckpt.pt").exists():
        state = torch.load(state_dir / "ckpt.pt", weights_only=True)
        # a resumed run may be given another --max_iters (its schedule follows); anything else makes another run
        if {**state["settings"], "max_iters": args.max_iters} != settings:
            raise UserError(f"{state_dir} holds a pretraining run with other settings; remove it or choose "
                            f"another --out_dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        it, history = state["iter"], state["history"]
        torch.set_rng_state(state["rng"])
        print(f"resuming at iteration {it}")
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters; {args.max_iters} iterations of "
          f"{args.batch_size} × {args.seq_len} tokens")
    train = corpus["train"]
    model.train()
    started = time.time()
    while it < args.max_iters:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(it, args)
        starts = torch.randint(0, len(train) - args.seq_len - 1, (args.batch_size,)).numpy()
        _, loss = model(*windows(train, starts, args.seq_len))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        it += 1
        if it % args.eval_interval == 0 or it == args.max_iters:
            record = {"iter": it, "train_loss": loss.item(), **evaluate(model, corpus, args.seq_len),
                      "tokens_per_s": args.batch_size * args.seq_len * (it - history[-1]["iter"] if history else it)
                      / (time.time() - started)}
            history.append(record)
            print(" | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
                  flush=True)
            state = {"iter": it, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "rng": torch.get_rng_state(), "history": history, "settings": settings}
            with atomic_path(state_dir / "ckpt.pt") as tmp:
                torch.save(state, tmp)
            started = time.time()
    save_pretrained(model, out_dir, tokenizer)
    with atomic_path(out_dir.with_name(out_dir.name + ".json")) as tmp:
        tmp.write_text(json.dumps({"settings": settings, "history": history}, indent=1))
    print(f"done: {out_dir} (copy accuracy {history[-1]['copy_accuracy']:.3f}, val loss {history[-1]['val_loss']:.3f})")


if __name__ == "__main__":
    main()
