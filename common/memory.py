"""Let glibc's malloc reuse freed memory instead of handing every large block back to the OS; measure a peak.

PyTorch's CPU tensors come from malloc. By default glibc returns a freed block of more than ~128 KiB to the
OS at once, so the next tensor of that size faults its memory back in a 4 KiB page at a time: on the 2-core
build VM a GPT-2-small training step paid ~40,000 such faults, ~50 ms of a 0.65 s step. With the thresholds
raised, blocks up to 32 MiB are recycled inside the process. The price is that memory freed after a peak
stays with the process until it exits, which suits a training or decoding run.
"""
import ctypes
import platform
import subprocess
import sys
from pathlib import Path

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
LARGEST_RECYCLED = 32 << 20                  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems


def reuse_freed_memory() -> bool:
    """Raise glibc's thresholds for this process; False where the C library is not glibc (nothing changes)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST_RECYCLED)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def peak_rss(code: str) -> int:
    """The peak resident set size, in bytes, of a fresh Python interpreter that runs `code` from the repository root.

    On Linux its VmHWM: ru_maxrss would not do, as exec carries the parent's high-water mark into the child.
    """
    probe = f"{code}\nfrom common.memory import own_peak_rss\nprint(own_peak_rss())"
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the measured process failed:\n{done.stderr}")
    return int(done.stdout.split()[-1])


def own_peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM on Linux, ru_maxrss elsewhere)."""
    if sys.platform == "linux":
        with open("/proc/self/status") as status:
            return 1024 * int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def peak_memory(device: torch.device) -> str:
    """The most memory this process held: the GPU's allocations on CUDA, else the process's peak resident set."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (CUDA, allocated)"
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return f"{peak / (2 ** 30 if sys.platform == 'darwin' else 2 ** 20):.2f} GiB (peak RSS)"
