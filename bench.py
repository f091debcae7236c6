"""Benchmark our prefix-tuning: the training step, decoding with the prefix, and the step against the machine's peak.

    python bench.py                    # our GPT + PrefixTuning, GPT-2-small shaped
    python bench.py --quick            # a tiny model and a few iterations: checks that everything runs
    python bench.py --full_weights     # full-weight training of our GPT instead (no prefix)
    python bench.py --loading          # the peak RSS of loading a checkpoint of the model's shape instead
    python bench_peft.py               # the same work in transformers + PEFT against ours

Speed does not depend on the weights' values, so the model is random and nothing is downloaded.
  training step  forward, backward and AdamW on the prefix (P' and its MLP), the GPT frozen, the loss on the
                 last --supervised tokens of each row: seconds per step (median of --steps after --warmup),
                 input tokens per second, and peak memory.
  decoding       --new_tokens after each row's first seq_len - supervised tokens (the table half), greedy and
                 beam search, the prefix computed inside the timed call; end-of-text is banned, so every row gets
                 all its tokens. Tokens/s counts the tokens returned (one text per row).
  matmul peak    the best FLOP/s of a square matmul (float32 on CPU, bfloat16 on a GPU) with torch's threads as
                 configured, by torch.matmul or, where the model uses it, oneDNN (model/cpu_kernels.py), whichever
                 is faster; the step's useful FLOP/s (training_step_flops) are given as a share of it.
  --full_weights full fine-tuning (or pretraining) instead: every weight of our GPT trains, the LM head tied to
                 the token embedding, fused AdamW over all of them, the loss on the last --supervised tokens as
                 above: seconds per step, tokens per second and peak memory, nothing else.
Training uses fused AdamW and malloc recycling freed memory (common/memory.py), as train.py does.
Peak memory is what the training steps (warm-up included) add to the process once the model is built: on CPU
the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs after malloc_trim hands freed
heap back) minus the resident size before the first step; on CUDA torch.cuda.max_memory_allocated minus the
allocation before it.
"""
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.timing import machine, measure, measure_training
from benchmarks.work import ROWS, cell, describe, model_config, parse_work, prefix_work, random_batch, work_parser
from common import exit_on_user_error
from common.cli import autocast, pick_device, pick_dtype
from common.memory import reuse_freed_memory
from model import GPT
from model.cpu_kernels import use_cpu_kernels
from model.loading import loading_peak_rss, save_pretrained


def parse_args(argv=None):
    p = work_parser(__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON line")
    p.add_argument("--full_weights", action="store_true",
                   help="time full-weight training of our GPT instead (every weight trains; no prefix, no decoding)")
    p.add_argument("--loading", action="store_true", help="measure loading instead: the peak RSS of a fresh process "
                   "that loads a checkpoint of the model's shape (random weights, Hugging Face layout)")
    return parse_work(p, argv)


def full_weight_side(args, device, dtype):
    """Full fine-tuning: every weight of our GPT trains (the LM head is wte, tied), fused AdamW over all of them."""
    gpt = GPT(model_config(args)).to(device)
    use_cpu_kernels(gpt)
    optimizer = torch.optim.AdamW(gpt.parameters(), fused=True)
    idx, targets, _ = random_batch(args, device)

    def train_step():
        with autocast(device, dtype):
            _, loss = gpt(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return train_step


def measure_full_weights(args) -> dict:
    """The --full_weights measurement: our GPT's full-weight training step."""
    reuse_freed_memory()
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    torch.manual_seed(0)
    step_s, memory = measure_training(args, full_weight_side(args, device, dtype), device)
    return dict(step_s=step_s, train_tokens_per_s=args.batch_size * args.seq_len / step_s,
                memory_mib=None if memory is None else memory / 2 ** 20, machine=machine(device, dtype))


def measure_loading(args) -> str:
    """The peak RSS of loading a checkpoint of the model's shape in a fresh process, above that of loading one of a few
    KB (model/loading.py: loading_peak_rss), against the checkpoint's size."""
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_pretrained(GPT(model_config(args)), Path(tmp, "gpt"))
        size = (checkpoint / "model.safetensors").stat().st_size
        peak, tiny = loading_peak_rss(checkpoint)
    return (f"loading a {size / 2**20:,.0f} MiB checkpoint ({args.n_layer} layers, {args.n_embd} wide, vocab "
            f"{args.vocab_size}, random weights): peak RSS {peak / 2**20:,.0f} MiB against {tiny / 2**20:,.0f} MiB "
            f"for one of a few KB, a difference of {(peak - tiny) / size:.2f}x the checkpoint's size")


def report(args, m: dict) -> str:
    lines = describe(args, m["machine"], prefix_work(args)) + [""]
    return "\n".join(lines + [f"{label.format(beams=args.beams):32}{cell(key, m[key]):>12}" for key, label in ROWS])


def report_full_weights(args, m: dict) -> str:
    lines = describe(args, m["machine"], f"full-weight training {args.batch_size} × {args.seq_len} tokens, loss on "
                     f"the last {args.supervised}; every weight trains, fused AdamW; median of {args.steps} steps")
    return "\n".join(lines + [""] + [f"{label:32}{cell(key, m[key]):>12}" for key, label in ROWS[:3]])


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    if args.loading:
        print(measure_loading(args))
        return
    m = measure_full_weights(args) if args.full_weights else measure(args)
    print(json.dumps(m) if args.json else report_full_weights(args, m) if args.full_weights else report(args, m))


if __name__ == "__main__":
    main()
