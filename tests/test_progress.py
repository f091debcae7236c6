"""common/progress.py: one updating line on a terminal, a line per tenth in a log, nothing for a short wait; and
the scoring loops that report through it."""
import io

import pytest

from common.progress import Progress, format_duration, format_rate
from metrics.ter import ter


class Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self):
        return self.terminal


class Clock:
    """A clock the test moves: `step` seconds pass between two readings after the first."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now - self.step


def run_loop(steps: int, seconds_each: float, terminal: bool) -> str:
    stream = Stream(terminal)
    with Progress("decoding", steps, "tables", stream=stream, clock=Clock(seconds_each)) as progress:
        for _ in range(steps):
            progress.advance()
    return stream.getvalue()


def test_durations_and_rates_read_at_a_glance():
    assert [format_duration(s) for s in (0, 65.9, 3599, 3600, 11_220)] == ["0m00s", "1m05s", "59m59s", "1h00m", "3h07m"]
    assert [format_rate(r) for r in (0.0523, 3.4, 87.46, 1234.4)] == ["0.0523", "3.4", "87.5", "1,234"]


def test_a_log_gets_a_line_per_tenth_with_rate_and_time_left():
    lines = run_loop(100, 1.0, terminal=False).splitlines()
    assert len(lines) == 10 and "\r" not in "".join(lines)
    assert lines[0] == "decoding: 10/100 tables (10%) | 1 tables/s | 0m10s elapsed, 1m30s left"
    assert lines[4].startswith("decoding: 50/100 tables (50%) | ")
    assert lines[-1] == "decoding: 100/100 tables (100%) | 1 tables/s | 1m40s elapsed"


def test_a_log_gets_ten_lines_however_long_the_loop():
    assert len(run_loop(10_000, 0.01, terminal=False).splitlines()) == 10
    assert len(run_loop(7, 3.0, terminal=False).splitlines()) == 7  # fewer steps than tenths: one line each


def test_a_terminal_gets_one_line_redrawn_in_place():
    out = run_loop(200, 0.125, terminal=True)
    assert out.count("\n") == 1
    assert out.endswith("\rdecoding: 200/200 tables (100%) | 7.96 tables/s | 0m25s elapsed\x1b[K\n")
    assert "\rdecoding: 100/200 tables (50%) | 8 tables/s | 0m12s elapsed, 0m12s left\x1b[K\r" in out
    # silent for the first 2 s (15 steps), then redrawn every 0.2 s: at every second step, and once at the end
    assert out.count("\r") == len(range(16, 201, 2)) + 1


@pytest.mark.parametrize("terminal", [False, True])
def test_a_short_wait_prints_nothing(terminal):
    assert run_loop(100, 0.01, terminal) == ""


def test_lines_start_once_the_wait_is_long_and_a_long_single_step_still_reports():
    lines = run_loop(10, 0.5, terminal=False).splitlines()  # 2 s pass at step 4: the tenths before stay silent
    assert [line.split()[1] for line in lines] == [f"{n}/10" for n in range(4, 11)]
    assert run_loop(1, 5.0, terminal=False) == "decoding: 1/1 tables (100%) | 0.2 tables/s | 0m05s elapsed\n"


def test_ter_reports_its_progress(monkeypatch, capsys):
    monkeypatch.setattr(Progress, "quiet_seconds", 0)
    ter([f"a b c {i}" for i in range(30)], [[f"a b {i}"] for i in range(30)])
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[-1].startswith("TER: 30/30 texts (100%)")
