"""How far a long wait has come: steps done of the total, the rate, the time spent and the time left.

On a terminal the report is one line, rewritten in place; in a log (CI, a file, a pipe) it is a line each time
another tenth is done, so a log grows by ten lines however long the loop. Either way a wait that is over within
`Progress.quiet_seconds` prints nothing: a quick step needs no report.
"""
import sys
import time


def format_duration(seconds: float) -> str:
    """1m05s, 12m40s, 3h07m: the precision a person waiting needs."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def format_rate(per_second: float) -> str:
    """0.052, 3.4, 87.5, 1,234: three significant digits, no exponent."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.3g}"


class Progress:
    """Reports a loop of `total` steps on `stream` (stderr unless given); `advance` after each step, `close` at the
    end (or use it as a context manager). `unit` names the steps ("tables")."""

    quiet_seconds = 2.0     # a wait shorter than this prints nothing
    redraw_seconds = 0.2    # a terminal's line is redrawn at most this often

    def __init__(self, what: str, total: int, unit: str = "", stream=None, clock=time.monotonic):
        self.what, self.total, self.unit = what, total, f" {unit}" if unit else ""
        self.stream = sys.stderr if stream is None else stream
        self.terminal = self.stream.isatty()
        self.clock, self.started = clock, clock()
        self.done, self.reported_tenth, self.drawn_at, self.printed = 0, 0, None, False

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def advance(self, steps: int = 1) -> None:
        self.done += steps
        now = self.clock()
        if now - self.started < self.quiet_seconds:
            return
        if self.terminal:
            if self.drawn_at is None or now - self.drawn_at >= self.redraw_seconds:
                self._write("\r" + self.line(now) + "\x1b[K")
                self.drawn_at = now
        elif self.tenth() > self.reported_tenth:
            self._write(self.line(now) + "\n")
        self.reported_tenth = self.tenth()

    def close(self) -> None:
        """The final line, where anything was reported or the wait was long; a terminal's line is ended."""
        now = self.clock()
        if self.printed or now - self.started >= self.quiet_seconds:
            if self.terminal:
                self._write("\r" + self.line(now) + "\x1b[K\n")
            elif self.tenth() > self.reported_tenth or not self.printed:
                self._write(self.line(now) + "\n")

    def tenth(self) -> int:
        return 10 * self.done // self.total if self.total else 10

    def line(self, now: float) -> str:
        elapsed = now - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = (f"{self.what}: {self.done:,}/{self.total:,}{self.unit} ({100 * self.done // max(self.total, 1)}%) | "
                f"{format_rate(rate)}{self.unit}/s | {format_duration(elapsed)} elapsed")
        if 0 < self.done < self.total:
            text += f", {format_duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
        self.printed = True
