"""Files that are either complete or absent: write to a temporary name, then rename."""
import os
from contextlib import contextmanager
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Where downloads and tokenized data are cached: $PREFIX_TUNING_CACHE, else ~/.cache/prefix-tuning."""
    root = os.environ.get("PREFIX_TUNING_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefix-tuning"
    return Path(root, *parts)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on failure removed.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the bytes must be on disk before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
