"""common/memory.py: with reuse_freed_memory(), tensors that come and go stop faulting their pages in anew."""
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

CHURN = """
import ctypes, resource, sys, torch
from common.memory import M_MMAP_THRESHOLD, reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
else:  # glibc's starting threshold, pinned: its automatic raising depends on what the process freed before
    assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 << 10)
torch.empty(1 << 20).fill_(1)  # warm-up: the thread pool and the kernel
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(40):
    torch.empty((1 << 20) + 1024 * i).fill_(1)  # ~4 MiB, a little larger each time, like a growing KV cache
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's; elsewhere nothing changes")
@pytest.mark.slow  # page faults counted in processes of their own, churning large tensors
def test_freed_tensors_are_recycled_instead_of_faulted_in_again():
    default, reused = page_faults("default"), page_faults("reuse")
    assert default > 40 * 500   # ~1,000 faults per 4 MiB tensor: glibc returned each one to the OS
    assert reused < default / 4
