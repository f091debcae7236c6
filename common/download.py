"""One download helper for checkpoints and datasets: cache, progress bar, temp name, size check."""
import http.client
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from common.errors import UserError
from common.files import atomic_path


def download(url: str, path, what: str, offline_hint: str, headers: dict[str, str] | None = None) -> Path:
    """Fetch `url` to `path` unless it is already there; return `path`.

    A file under its final name is always complete: bytes go to a temporary name, their count is checked
    against the Content-Length the server announced, and only then is the file renamed. `what` names the
    thing in messages; `offline_hint` says how to supply it without a network. `headers` go with the request to
    `url` only, never with a redirect (so a token is not handed to the host it leads to).
    """
    path = Path(path)
    if path.exists():
        return path
    request = urllib.request.Request(url)
    for name, value in (headers or {}).items():
        request.add_unredirected_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response, atomic_path(path) as tmp:
            expected = int(response.headers.get("Content-Length", -1))
            received = _copy_with_progress(response, tmp, expected, what)
            if expected >= 0 and received != expected:
                raise http.client.IncompleteRead(b"", expected - received)
    except http.client.IncompleteRead:
        raise UserError(f"the download of {what} from {url} broke off before the end; "
                        f"run again to retry, or {offline_hint}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # HTTPError is a URLError
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {what} from {url} ({reason}); {offline_hint}") from None
    if not sys.stderr.isatty():
        print(f"downloaded {what} ({received / 2**20:.1f} MiB) from {url}", file=sys.stderr)
    return path


def _copy_with_progress(response, tmp: Path, total: int, what: str) -> int:
    """Copy the response body to `tmp`, drawing a progress bar when stderr is a terminal."""
    received, last_draw = 0, 0.0
    draw = sys.stderr.isatty()
    with open(tmp, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)
            received += len(chunk)
            if draw and (time.monotonic() - last_draw > 0.2 or received == total):
                last_draw = time.monotonic()
                bar = "#" * (30 * received // total) if total > 0 else ""
                size = f"{received / 2**20:.1f}" + (f"/{total / 2**20:.1f}" if total > 0 else "")
                print(f"\r{what} [{bar:<30}] {size} MiB", end="", file=sys.stderr, flush=True)
    if draw:
        print(file=sys.stderr)
    return received
