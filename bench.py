"""Benchmark prefix-tuning: the training step, decoding with the prefix, and the step against the machine's peak.

    python bench.py                    # our GPT + PrefixTuning, GPT-2-small shaped
    python bench.py --compare peft     # the same work in transformers + PEFT, processes alternating A B A B
    python bench.py --quick            # a tiny model and a few iterations: checks that everything runs

Speed does not depend on the weights' values, so both models are random and nothing is downloaded.
  training step  forward, backward and AdamW on the prefix (P' and its MLP), the GPT frozen, the loss on the
                 last --supervised tokens of each row: seconds per step (median of --steps after --warmup),
                 input tokens per second, and peak memory.
  decoding       --new_tokens after each row's first seq_len - supervised tokens (the table half), greedy and
                 beam search, the prefix computed inside the timed call; end-of-text is banned on both sides,
                 so every row gets all its tokens. Tokens/s counts the tokens returned (one text per row).
  matmul peak    the best FLOP/s of a square matmul (float32 on CPU, bfloat16 on a GPU) with torch's threads as
                 configured; the step's useful FLOP/s (training_step_flops) are given as a share of it.
Peak memory is what the training steps (warm-up included) add to the process after the models are built: on
CPU the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs after malloc_trim hands freed
heap back) minus the resident size before the first step; on CUDA torch.cuda.max_memory_allocated minus the
allocation before it. With --compare each measurement runs in a fresh process, so no side inherits the
other's memory or warm caches.
"""
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import torch

from common import UserError, exit_on_user_error
from common.cli import ArgumentParser, autocast, pick_device, pick_dtype
from model import GPT, GPTConfig
from model.generate import beam_search, generate
from prefix import PrefixTuning, freeze

# --quick: defaults for a tiny model and a few iterations (flags given explicitly still win)
QUICK = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=128, batch_size=2, seq_len=16, supervised=8,
             prefix_len=4, mid_dim=32, warmup=1, steps=2, new_tokens=4, beams=2, repeats=1, matmul_size=256)
TARGETS = dict(speedup=1.3, greedy_speedup=2.0, useful_share=0.70)  # of the issue: against PEFT, and of the peak


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", default="none", choices=["none", "peft"],
                   help="peft: run both sides --repeats times in fresh processes, A B A B, and print medians and ratios")
    p.add_argument("--side", default="ours", choices=["ours", "peft"], help="what this process measures without --compare")
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON line (what --compare reads)")
    p.add_argument("--quick", action="store_true", help="a tiny model and a few iterations, for tests: " +
                   " ".join(f"--{k} {v}" for k, v in QUICK.items()))
    p.add_argument("--repeats", type=int, default=5, help="processes per side with --compare")
    g = p.add_argument_group("the model (random weights; GPT-2 small by default)")
    g.add_argument("--n_layer", type=int, default=12)
    g.add_argument("--n_head", type=int, default=12)
    g.add_argument("--n_embd", type=int, default=768)
    g.add_argument("--vocab_size", type=int, default=50257)
    g.add_argument("--block_size", type=int, default=1024)
    g = p.add_argument_group("the work")
    g.add_argument("--batch_size", type=int, default=8)
    g.add_argument("--seq_len", type=int, default=64, help="tokens per training row")
    g.add_argument("--supervised", type=int, default=32, help="the loss is on this many last tokens of each row")
    g.add_argument("--prefix_len", type=int, default=10)
    g.add_argument("--mid_dim", type=int, default=512, help="the reparameterization MLP's width")
    g.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    g.add_argument("--steps", type=int, default=5, help="timed training steps")
    g.add_argument("--new_tokens", type=int, default=32, help="tokens decoded per row")
    g.add_argument("--beams", type=int, default=5, help="beam search width")
    g.add_argument("--matmul_size", type=int, default=None, help="n of the n×n×n peak matmul (default: 2048 on CPU, 8192 on a GPU)")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on a GPU that supports it, else float32")
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    for name in ("repeats", "n_layer", "n_head", "n_embd", "vocab_size", "batch_size", "supervised", "prefix_len",
                 "mid_dim", "steps", "new_tokens", "beams"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.n_embd % args.n_head:
        raise UserError(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    if not args.supervised < args.seq_len:
        raise UserError(f"--supervised {args.supervised} must be below --seq_len {args.seq_len}: the prompts are the rest")
    if args.prefix_len + max(args.seq_len, args.seq_len - args.supervised + args.new_tokens) > args.block_size:
        raise UserError(f"the prefix and the longest sequence need more than --block_size {args.block_size} positions")
    if args.compare == "peft" and not (find_spec("transformers") and find_spec("peft")):
        raise UserError("--compare peft needs transformers and peft: pip install -r requirements-dev.txt")
    return args


def training_step_flops(c: GPTConfig, batch_size: int, seq_len: int, supervised: int, prefix_len: int,
                        mid_dim: int) -> int:
    """The useful FLOPs of one training step: what the math needs, not what any code happens to compute.

    Matmuls only (a multiply-add is 2 FLOPs; biases, norms, activations, the softmaxes and AdamW are left out).
    Per row of T = seq_len tokens, S = supervised of them with targets, P = prefix_len:
      forward   each block's q, k, v, output and MLP projections for every token; attention QKᵀ and AV over
                the keys each query may see (the P prefix keys and the tokens up to itself; masked pairs are
                not counted); the LM head at the S supervised positions only. The top block's output is read
                only there, so elsewhere it needs just the keys and values.
      backward  the GPT is frozen: no weight gradients, only gradients of activations, so one matmul per
                forward projection (dX = dY·Wᵀ) and two per attention matmul (both operands are activations);
                none into the bottom block's projections, whose input is the frozen embedding. (The bottom
                block's attention is counted in full, though only its prefix keys and values need gradients:
                a negligible overcount.)
      prefix    P = MLP(P') once per step: its forward, and twice that backward (weights and inputs).
    """
    C, T, S, P = c.n_embd, seq_len, supervised, prefix_len
    kv, q = 2 * 2 * C * C, 2 * C * C                                      # per token: the K, V and the Q projections
    output_and_mlp = 2 * (C * C + 2 * C * (c.n_inner or 4 * C))

    def block(queries: range, bottom: bool) -> int:
        """Forward and backward of one block whose outputs are needed at these query positions."""
        projections = T * kv + len(queries) * q
        attention = 4 * C * sum(P + i + 1 for i in queries)
        forward = projections + len(queries) * output_and_mlp + attention
        backward = forward + attention - (projections if bottom else 0)
        return forward + backward

    blocks = sum(block(range(T) if layer < c.n_layer - 1 else range(T - S, T), bottom=layer == 0)
                 for layer in range(c.n_layer))
    lm_head = 2 * (2 * C * c.vocab_size * S)                               # forward and the gradient of its input
    prefix_mlp = 3 * 2 * P * (C * mid_dim + mid_dim * 2 * c.n_layer * C)
    return batch_size * (blocks + lm_head) + prefix_mlp


# ---- the two sides: the same work, as (train_step, decode) --------------------------------------------------

def work(args, device):
    """Token ids (B, T), targets (only the last `supervised` of each row kept), and prompts (B, T - supervised)."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab_size - 1, (args.batch_size, args.seq_len + 1), generator=g)  # never eos
    targets = tokens[:, 1:].clone()
    targets[:, :args.seq_len - args.supervised] = -100
    idx = tokens[:, :-1]
    return idx.to(device), targets.to(device), idx[:, :args.seq_len - args.supervised].to(device)


def ours(args, device, dtype):
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                       block_size=args.block_size)
    gpt = freeze(GPT(config).to(device))
    prefix = PrefixTuning(config, args.prefix_len, args.mid_dim).to(device)
    optimizer = torch.optim.AdamW(prefix.parameters())
    idx, targets, prompts = work(args, device)
    eos = args.vocab_size - 1

    def train_step():
        with autocast(device, dtype):
            loss = prefix.loss(gpt, idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def decode(beams: int, new_tokens: int):
        with autocast(device, dtype):
            cache, prompt, mask = prefix.start_decoding(gpt, prompts, None)
            if beams == 1:
                return generate(gpt, prompt, new_tokens, cache=cache, attention_mask=mask, temperature=0,
                                banned_ids=[eos])
            return beam_search(gpt, prompt, new_tokens, beams, cache=cache, attention_mask=mask, eos_id=eos,
                               banned_ids=[eos])
    return train_step, decode


def peft(args, device, dtype):
    """transformers' GPT2LMHeadModel (eval mode, frozen) with PEFT's prefix tuning and transformers' generate."""
    from peft import PrefixTuningConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging
    logging.set_verbosity_error()
    config = GPT2Config(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                        n_positions=args.block_size, bos_token_id=args.vocab_size - 1, eos_token_id=args.vocab_size - 1)
    prefix_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.prefix_len,
                                       prefix_projection=True, encoder_hidden_size=args.mid_dim)
    model = get_peft_model(GPT2LMHeadModel(config), prefix_config).to(device).eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    idx, targets, prompts = work(args, device)
    labels = idx.masked_fill(targets == -100, -100)  # transformers shifts labels itself: the last S tokens
    eos = args.vocab_size - 1

    def train_step():
        with autocast(device, dtype):
            loss = model(input_ids=idx, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def decode(beams: int, new_tokens: int):
        with autocast(device, dtype):  # min_new_tokens bans eos until the end, as banned_ids does on our side
            out = model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                                 num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 eos_token_id=eos, pad_token_id=eos)
        return out[:, prompts.size(1):]
    return train_step, decode


# ---- measuring -----------------------------------------------------------------------------------------------

def measure(args) -> dict:
    """Everything this process measures for args.side."""
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    torch.manual_seed(0)
    train_step, decode = (ours if args.side == "ours" else peft)(args, device, dtype)

    baseline = memory_baseline(device)
    for _ in range(args.warmup):
        train_step()
    step_s = statistics.median(seconds(train_step, device) for _ in range(args.steps))
    memory = memory_peak(device, baseline)

    decoded = {}
    for name, beams in (("greedy", 1), ("beam", args.beams)):
        decode(beams, 2)  # warm-up
        elapsed = seconds(lambda: decoded.setdefault(name, decode(beams, args.new_tokens)), device)
        decoded[name] = sum(len(row) for row in decoded[name]) / elapsed

    peak = matmul_peak(args.matmul_size or (8192 if device.type == "cuda" else 2048), device, dtype)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size)
    useful = training_step_flops(config, args.batch_size, args.seq_len, args.supervised, args.prefix_len,
                                 args.mid_dim) / step_s
    return dict(step_s=step_s, train_tokens_per_s=args.batch_size * args.seq_len / step_s,
                memory_mib=None if memory is None else memory / 2 ** 20,
                greedy_tokens_per_s=decoded["greedy"], beam_tokens_per_s=decoded["beam"],
                useful_gflops=useful / 1e9, peak_gflops=peak / 1e9, useful_share=useful / peak,
                machine=machine(device, dtype))


def seconds(fn, device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(n: int, device, dtype) -> float:
    """FLOP/s of the fastest of 10 n×n×n matmuls after a warm-up."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    return 2 * n ** 3 / min(seconds(lambda: a @ b, device) for _ in range(10))


def memory_baseline(device) -> int | None:
    """Reset the peak-memory counter; the bytes in use now (None where this OS gives no way to measure)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        ctypes.CDLL(None).malloc_trim(0)              # glibc: freed heap back to the OS, so RSS is what is live
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    except (AttributeError, OSError):
        return None
    return process_memory("VmRSS")


def memory_peak(device, baseline: int | None) -> int | None:
    """Bytes above `baseline` at the peak since memory_baseline."""
    if baseline is None:
        return None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else process_memory("VmHWM")
    return peak - baseline


def process_memory(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024  # kB


def machine(device, dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        names = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines() if l.startswith("model name")] \
            if cpuinfo.exists() else []
        name = f"{names[0] if names else platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}, {str(dtype).removeprefix('torch.')}"


# ---- reporting -----------------------------------------------------------------------------------------------

ROWS = [  # (key, label, higher is better)
    ("step_s", "training step, s", False),
    ("train_tokens_per_s", "training tokens/s", True),
    ("memory_mib", "training peak memory, MiB", False),
    ("greedy_tokens_per_s", "greedy decoding tokens/s", True),
    ("beam_tokens_per_s", "beam decoding tokens/s", True),
    ("useful_gflops", "useful GFLOP/s in training", True),
    ("peak_gflops", "matmul peak GFLOP/s", True),
    ("useful_share", "useful / matmul peak", True),
]


def describe(args, machine_line: str) -> str:
    return (f"machine: {machine_line}\n"
            f"model:   {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, vocab {args.vocab_size}, "
            f"random weights\n"
            f"work:    training {args.batch_size} × {args.seq_len} tokens, loss on the last {args.supervised}, "
            f"prefix {args.prefix_len}, MLP {args.mid_dim}; decoding {args.new_tokens} tokens after "
            f"{args.seq_len - args.supervised}, beams {args.beams}")


def value(key: str, x) -> str:
    return "n/a" if x is None else f"{x:.0%}" if key == "useful_share" else f"{x:.3f}" if key == "step_s" else f"{x:,.1f}"


def report_one(args, m: dict) -> str:
    lines = [describe(args, m["machine"]), "", f"{'':28}{args.side:>12}"]
    lines += [f"{label.replace('beam', f'beam-{args.beams}'):28}{value(key, m[key]):>12}" for key, label, _ in ROWS]
    met = m["useful_share"] >= TARGETS["useful_share"]
    lines += ["", f"target: useful FLOP/s ≥ {TARGETS['useful_share']:.0%} of the matmul peak: {'met' if met else 'MISSED'}"]
    return "\n".join(lines)


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def report_comparison(args, runs: dict[str, list[dict]]) -> str:
    """Medians per side, ours against peft (how many times faster, or the memory ratio), and the targets."""
    ours_m, peft_m = ({key: median(runs[side], key) for key, _, _ in ROWS} for side in ("ours", "peft"))
    speedup = lambda key: (ours_m[key] / peft_m[key]) ** (1 if dict((k, h) for k, _, h in ROWS)[key] else -1)
    lines = [describe(args, runs["ours"][0]["machine"]),
             f"medians of {args.repeats} fresh processes per side, run alternately", "",
             f"{'':28}{'ours':>12}{'peft':>12}   ours against peft"]
    for key, label, higher in ROWS:
        label = label.replace("beam", f"beam-{args.beams}")
        if key == "memory_mib":
            ratio = "n/a" if None in (ours_m[key], peft_m[key]) else f"{ours_m[key] / peft_m[key]:.2f}x the memory"
        else:
            ratio = f"{speedup(key):.2f}x {'faster' if key in ('step_s', 'train_tokens_per_s') or 'tokens' in key else ''}"
        lines.append(f"{label:28}{value(key, ours_m[key]):>12}{value(key, peft_m[key]):>12}   {ratio.strip()}")
    checks = [(f"training step ≥ {TARGETS['speedup']}x faster than PEFT", speedup("step_s") >= TARGETS["speedup"]),
              ("training peak memory no higher than PEFT's",
               None not in (ours_m["memory_mib"], peft_m["memory_mib"]) and ours_m["memory_mib"] <= peft_m["memory_mib"]),
              (f"greedy decoding ≥ {TARGETS['greedy_speedup']}x faster than PEFT",
               speedup("greedy_tokens_per_s") >= TARGETS["greedy_speedup"]),
              (f"useful FLOP/s ≥ {TARGETS['useful_share']:.0%} of the matmul peak",
               ours_m["useful_share"] >= TARGETS["useful_share"])]
    lines += ["", "targets:"] + [f"  {'met   ' if ok else 'MISSED'}  {what}" for what, ok in checks]
    return "\n".join(lines)


def run_side(side: str, argv: list[str]) -> dict:
    """One measurement in a fresh process: this script with --side and --json."""
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--compare", "none", "--side", side, "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {side} measurement failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


@exit_on_user_error
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.compare == "none":
        m = measure(args)
        print(json.dumps(m) if args.json else report_one(args, m))
        return
    runs = {"ours": [], "peft": []}
    for i in range(args.repeats):
        for side in ("ours", "peft"):
            runs[side].append(run_side(side, argv))
            m = runs[side][-1]
            print(f"run {i + 1}/{args.repeats} {side:>4}: step {m['step_s']:.3f} s, greedy "
                  f"{m['greedy_tokens_per_s']:.1f} tok/s, beam {m['beam_tokens_per_s']:.1f} tok/s", flush=True)
    print("\n" + report_comparison(args, runs))


if __name__ == "__main__":
    main()
