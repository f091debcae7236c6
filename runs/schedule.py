"""Which rows every iteration of a run trains on, and at what learning rate."""
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch


@functools.lru_cache(maxsize=1)
def epoch_order(n_examples: int, seed: int, epoch: int) -> np.ndarray:
    return torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch)).numpy()


@dataclass(frozen=True)
class Schedule:
    """Which rows every iteration trains on, and at what learning rate. Both follow from (seed, iteration) alone,
    so a resumed run repeats them exactly."""
    n_examples: int
    batch_size: int         # rows of one micro-batch in one process
    world: int              # processes
    grad_accum: int         # micro-batches per iteration
    epochs: float
    max_iters: int | None
    peak_lr: float
    warmup_iters: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_examples / self.global_batch)

    @property
    def total_iters(self) -> int:
        total = math.ceil(self.epochs * self.steps_per_epoch)
        return total if self.max_iters is None else min(total, self.max_iters)

    def rows(self, it: int, rank: int, micro: int) -> np.ndarray:
        """This process's rows for micro-batch `micro` of iteration `it`: a slice of the epoch's permutation
        (wrapping at its end); the iteration's global batch is the next global_batch rows of it."""
        epoch, step = divmod(it, self.steps_per_epoch)
        start = step * self.global_batch + (micro * self.world + rank) * self.batch_size
        return epoch_order(self.n_examples, self.seed, epoch)[np.arange(start, start + self.batch_size)
                                                               % self.n_examples]

    def learning_rate(self, it: int) -> float:
        """Linear warmup, then linear decay to zero at the last iteration (the paper's linear schedule)."""
        if it < self.warmup_iters:
            return self.peak_lr * (it + 1) / self.warmup_iters
        return self.peak_lr * (self.total_iters - it) / max(1, self.total_iters - self.warmup_iters)
