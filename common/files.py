"""Files that are either complete or absent: write to a temporary name, then rename."""
import os
import shutil
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

    A crash at any moment leaves either the old file or the new one, never half of one. The caller may make
    the temporary path a directory: it then replaces `path` as a whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        for file in [f for f in tmp.rglob("*") if f.is_file()] if tmp.is_dir() else [tmp]:
            with open(file, "rb") as f:  # the bytes must be on disk before the name points at them
                os.fsync(f.fileno())
        if tmp.is_dir() and path.is_dir():  # the old directory stays whole until the new one is in its place
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
