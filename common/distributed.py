"""Processes: torchrun's rank and world size, agreement of the ranks at the end, and Ctrl-C."""
import os
import signal

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank): torchrun's, or (0, 1, 0) for a plain process."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))


def check_ranks_agree(module: torch.nn.Module, world: int) -> None:
    """Every process must end with the same trained weights: DDP averaged the same gradients into each."""
    flat = torch.cat([p.detach().flatten() for p in module.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if not all(torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError("the processes ended with different prefixes")
    if dist.get_rank() == 0:
        print(f"all {world} processes hold the same trained weights")


def stop_on_ctrl_c() -> list:
    """A list that becomes non-empty at the first Ctrl-C (the loop then saves and exits); a second one stops at
    once."""
    interrupted = []
    signal.signal(signal.SIGINT, lambda *_: (interrupted.append(True), signal.signal(signal.SIGINT, signal.SIG_DFL)))
    return interrupted
