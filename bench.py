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
import ctypes
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import UserError, exit_on_user_error
from common.cli import ArgumentParser, autocast, check_ranges, pick_device, pick_dtype
from common.memory import reuse_freed_memory
from model import GPT, GPTConfig
from model.generate import beam_search, generate
from model.cpu_kernels import onednn_matmul_t, takes_onednn, use_cpu_kernels
from model.loading import loading_peak_rss, save_pretrained
from prefix import PrefixTuning, freeze

# --quick: defaults for a tiny model and a few iterations (flags given explicitly still win)
QUICK = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=128, batch_size=2, seq_len=16, supervised=8,
             prefix_len=4, mid_dim=32, warmup=1, steps=2, new_tokens=4, beams=2, matmul_size=256)


def work_parser(description: str) -> ArgumentParser:
    """The flags that say what is measured: the model, the work, the device (bench_peft.py shares them)."""
    p = ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a tiny model and a few iterations, for tests: "
                   + " ".join(f"--{name} {value}" for name, value in QUICK.items()))
    g = p.add_argument_group("the model (random weights; GPT-2 small by default)")
    g.add_argument("--n_layer", type=int, default=12, help="blocks")
    g.add_argument("--n_head", type=int, default=12, help="attention heads")
    g.add_argument("--n_embd", type=int, default=768, help="width")
    g.add_argument("--vocab_size", type=int, default=50257, help="its last id is end-of-text")
    g.add_argument("--block_size", type=int, default=1024, help="positions")
    g = p.add_argument_group("the work")
    g.add_argument("--batch_size", type=int, default=8, help="rows, in training and in decoding")
    g.add_argument("--seq_len", type=int, default=64, help="tokens per training row")
    g.add_argument("--supervised", type=int, default=32, help="the loss is on this many last tokens of each row")
    g.add_argument("--prefix_len", type=int, default=10, help="prefix positions")
    g.add_argument("--mid_dim", type=int, default=512, help="the reparameterization MLP's width")
    g.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    g.add_argument("--steps", type=int, default=5, help="timed training steps")
    g.add_argument("--new_tokens", type=int, default=32, help="tokens decoded per row")
    g.add_argument("--beams", type=int, default=5, help="beam search width")
    g.add_argument("--matmul_size", type=int, default=None,
                   help="n of the n×n×n peak matmul (default: 2048 on CPU, 8192 on a GPU)")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 autocast on a GPU that supports it, else float32")
    return p


def parse_work(p: ArgumentParser, argv=None):
    """Parse, with --quick's defaults where it is given, and refuse work that cannot run."""
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args = p.parse_args(argv)
    check_ranges(args, positive=("n_layer", "n_head", "n_embd", "vocab_size", "batch_size", "supervised",
                                  "prefix_len", "mid_dim", "steps", "new_tokens", "beams", "matmul_size"),
                 at_least_zero=("warmup",))
    if args.n_embd % args.n_head:
        raise UserError(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}")
    if args.supervised >= args.seq_len:
        raise UserError(f"--supervised {args.supervised} must be below --seq_len {args.seq_len}: the tokens before "
                        f"the supervised ones are the decoding prompts")
    if args.prefix_len + max(args.seq_len, args.seq_len - args.supervised + args.new_tokens) > args.block_size:
        raise UserError(f"the prefix and the longest sequence need more than --block_size {args.block_size} positions")
    return args


def parse_args(argv=None):
    p = work_parser(__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON line")
    p.add_argument("--full_weights", action="store_true",
                   help="time full-weight training of our GPT instead (every weight trains; no prefix, no decoding)")
    p.add_argument("--loading", action="store_true", help="measure loading instead: the peak RSS of a fresh process "
                   "that loads a checkpoint of the model's shape (random weights, Hugging Face layout)")
    return parse_work(p, argv)


def training_step_flops(c: GPTConfig, batch_size: int, seq_len: int, supervised: int, prefix_len: int,
                        mid_dim: int) -> int:
    """The useful FLOPs of one training step: what the math needs, not what any code happens to compute.

    Matmuls only (a multiply-add is 2 FLOPs; biases, norms, activations, softmaxes and AdamW are left out).
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
    kv, q = 2 * 2 * C * C, 2 * C * C  # per token: the K and V projections, the Q projection
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
    lm_head = 2 * (2 * C * c.vocab_size * S)  # forward, and the gradient of its input
    prefix_mlp = 3 * 2 * P * (C * mid_dim + mid_dim * 2 * c.n_layer * C)
    return batch_size * (blocks + lm_head) + prefix_mlp


# ---- what is timed: train_step() and decode(beams, new_tokens) -----------------------------------------------

def model_config(args) -> GPTConfig:
    return GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, vocab_size=args.vocab_size,
                     block_size=args.block_size)


def random_batch(args, device):
    """Token ids (B, T), their next-token targets with only the last `supervised` kept, and the prompts: the
    first T - supervised tokens of each row. No token is the last id, which both sides use as end-of-text."""
    tokens = torch.randint(0, args.vocab_size - 1, (args.batch_size, args.seq_len + 1),
                           generator=torch.Generator().manual_seed(0))
    idx, targets = tokens[:, :-1], tokens[:, 1:].clone()
    targets[:, :args.seq_len - args.supervised] = -100
    return idx.to(device), targets.to(device), idx[:, :args.seq_len - args.supervised].to(device)


def our_side(args, device, dtype):
    config = model_config(args)
    gpt = freeze(GPT(config).to(device))
    prefix = PrefixTuning(config, args.prefix_len, args.mid_dim).to(device)
    use_cpu_kernels(gpt, prefix)
    optimizer = torch.optim.AdamW(prefix.parameters(), fused=True)
    idx, targets, prompts = random_batch(args, device)
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


# ---- measuring -----------------------------------------------------------------------------------------------

def measure(args, side=our_side) -> dict:
    """Everything this process measures, for the work that side(args, device, dtype) sets up: (train_step, decode).
    Malloc recycles freed memory, as in train.py."""
    reuse_freed_memory()
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    torch.manual_seed(0)
    train_step, decode = side(args, device, dtype)
    step_s, memory = measure_training(args, train_step, device)

    def decoding_rate(beams: int) -> float:
        decode(beams, 2)  # warm-up
        elapsed, texts = timed(lambda: decode(beams, args.new_tokens), device)
        return sum(len(text) for text in texts) / elapsed
    greedy, beam = decoding_rate(1), decoding_rate(args.beams)

    peak = matmul_peak(args.matmul_size or (8192 if device.type == "cuda" else 2048), device, dtype)
    useful = training_step_flops(model_config(args), args.batch_size, args.seq_len, args.supervised,
                                 args.prefix_len, args.mid_dim) / step_s
    return dict(step_s=step_s, train_tokens_per_s=args.batch_size * args.seq_len / step_s,
                memory_mib=None if memory is None else memory / 2 ** 20,
                greedy_tokens_per_s=greedy, beam_tokens_per_s=beam,
                useful_gflops=useful / 1e9, peak_gflops=peak / 1e9, useful_share=useful / peak,
                machine=machine(device, dtype))


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


def measure_training(args, train_step, device) -> tuple[float, int | None]:
    """Seconds per step (the median of --steps after --warmup) and the peak memory the steps add."""
    baseline = memory_baseline(device)
    for _ in range(args.warmup):
        train_step()
    step_s = statistics.median(timed(train_step, device)[0] for _ in range(args.steps))
    return step_s, memory_peak(device, baseline)


def timed(fn, device):
    """(seconds, result) of fn(), its queued device work included."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_peak(n: int, device, dtype) -> float:
    """FLOP/s of the fastest n×n×n matmul torch runs here (best of 10 after a warm-up): torch.matmul, and where
    model/linear.py uses it, oneDNN (on AMD CPUs MKL, behind torch.matmul, is about half as fast)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    kernels = [lambda: a @ b] + ([lambda: onednn_matmul_t(a, b)] if takes_onednn(a, b) else [])
    best = float("inf")
    for kernel in kernels:
        kernel()
        best = min(best, *(timed(kernel, device)[0] for _ in range(10)))
    return 2 * n ** 3 / best


def memory_baseline(device) -> int | None:
    """Reset the peak-memory counter and return the bytes in use now (None where there is no way to measure)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:
        ctypes.CDLL(None).malloc_trim(0)               # glibc: freed heap back to the OS, so RSS is what is live
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
    return int(line.split()[1]) * 1024  # given in kB


def machine(device, dtype) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        name = f"{models[0] if models else platform.machine()}, {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}, {str(dtype).removeprefix('torch.')}"


# ---- reporting -----------------------------------------------------------------------------------------------

ROWS = [  # key, label
    ("step_s", "training step, s"),
    ("train_tokens_per_s", "training tokens/s"),
    ("memory_mib", "training peak memory, MiB"),
    ("greedy_tokens_per_s", "greedy decoding tokens/s"),
    ("beam_tokens_per_s", "beam-{beams} decoding tokens/s"),
    ("useful_gflops", "useful GFLOP/s in training"),
    ("peak_gflops", "matmul peak GFLOP/s"),
    ("useful_share", "useful / matmul peak"),
]


def cell(key: str, x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0%}" if key == "useful_share" else f"{x:.3f}" if key == "step_s" else f"{x:,.1f}"


def describe(args, machine_name: str, work: str) -> list[str]:
    """The header of a report: the machine, the model, the work."""
    lines = [f"machine: {machine_name}",
             f"model:   {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, vocab {args.vocab_size}, "
             f"random weights",
             f"work:    {work}"]
    if args.quick:
        lines.append("--quick: a check that everything runs; the numbers mean nothing")
    return lines


def prefix_work(args) -> str:
    return (f"training {args.batch_size} × {args.seq_len} tokens, loss on the last {args.supervised}, prefix "
            f"{args.prefix_len}, MLP {args.mid_dim}; decoding {args.new_tokens} tokens after "
            f"{args.seq_len - args.supervised}, beams {args.beams}")


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
