"""Figures as PNG files. matplotlib is an optional extra: only the commands that draw import it."""
from pathlib import Path

from common.errors import UserError
from common.files import atomic_path


def pyplot():
    """matplotlib.pyplot on its file-only backend (no display needed); one sentence when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("drawing figures needs matplotlib, an optional extra: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path, dpi: int = 100) -> Path:
    """Write `fig` to `path` as a PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)
    return Path(path)
