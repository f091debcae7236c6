"""A run folder (--out_dir) holds one run: its files carry one run id, and a new run never mixes with an old one."""
import platform
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from common.errors import UserError


def new_run_id() -> str:
    """When the run started, and 6 random hex digits against two runs started in the same second."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def claim_out_dir(out_dir: Path, run_files: list[str], overwrite: bool) -> None:
    """Make sure a new run starts in an empty folder: refuse one that holds anything, unless `overwrite`, which
    removes an earlier run's files (and only those) first."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out_dir {out_dir} is a file, not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise UserError(f"--out_dir {out_dir} is not empty; continue its run with --resume, replace it with "
                        f"--overwrite, or choose another --out_dir")
    for name in run_files:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def environment() -> dict:
    """What produced a run besides its arguments: the versions, and the code's git commit when there is one."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        dirty = commit is not None and bool(subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git, or not a clone
        commit, dirty = None, False
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "git_commit": commit, "git_uncommitted_changes": dirty, "command": [sys.executable, *sys.argv]}


def peak_memory(device: torch.device) -> str:
    """The most memory this process held: the GPU's allocations on CUDA, else the process's peak resident set."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2 ** 30:.2f} GiB (CUDA, allocated)"
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return f"{peak / (2 ** 30 if sys.platform == 'darwin' else 2 ** 20):.2f} GiB (peak RSS)"
