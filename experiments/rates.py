"""Each method's learning rate, chosen for the budget it will be used at.

A probe is the real run at one candidate rate, trained to a fixed point of its own schedule (the same linear decay,
paused there by --stop_at) and ranked by its lowest dev loss so far; the chosen candidate's probe is the beginning
of the real run, which goes on from it. Candidates lie on a grid ×3 apart around a starting rate; while the best
one is at an edge of those tried, the grid is widened on that side (a few times at most), so that the chosen rate
has a worse candidate on both sides.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from experiments.runner import Run, Setup, advance

STEP = 3.0


def probe_loss(progress: dict, until: int | None) -> float:
    """The lowest dev loss up to iteration `until` (None: the whole run), wherever the run has got to since;
    infinity for a rate that diverged by then."""
    losses = [loss for it, loss, *_ in progress["curve"] if until is None or it <= until]
    diverged = progress["diverged"] is not None and (until is None or progress["diverged"] <= until)
    return math.inf if diverged or not losses else min(losses)


def choose_rate(run: Run, start: float, until: int | None, setup: Setup, grid: tuple[int, ...] = (-1, 0, 1),
                widenings: int = 3, announce: Callable[[Run], None] = lambda run: None) -> tuple[Run, dict]:
    """The run at its chosen rate (trained to `until` so far: its probe), and the probes as a record:
    {"rates": [[rate, dev loss], ...] in rising order, "chosen": rate, "at_edge": bool, "until": iteration}.
    The first candidates are start · 3^k for k in `grid`."""
    losses: dict[int, float] = {}  # grid step k (rate = start · STEP^k) -> its probe's dev loss

    def probe(k: int) -> None:
        candidate = run.at_rate(start * STEP ** k)
        announce(candidate)
        losses[k] = probe_loss(advance(candidate, setup, until), until)

    for k in grid:
        probe(k)
    for _ in range(widenings):
        best = min(losses, key=losses.get)
        if min(losses) < best < max(losses):
            break
        probe(best - 1 if best == min(losses) else best + 1)
    best = min(losses, key=losses.get)
    record = {"rates": [[start * STEP ** k, losses[k]] for k in sorted(losses)], "chosen": start * STEP ** best,
              "at_edge": not min(losses) < best < max(losses), "until": until or run.iters}
    return run.at_rate(start * STEP ** best), record
