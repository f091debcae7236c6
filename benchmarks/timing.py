"""How bench.py and bench_peft.py measure: seconds per training step, decoding tokens/s, the peak memory the steps
add, and the machine's matmul peak."""
import ctypes
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.work import model_config, our_side, training_step_flops
from common.cli import pick_device, pick_dtype
from common.memory import reuse_freed_memory
from model.cpu_kernels import onednn_matmul_t, takes_onednn


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
