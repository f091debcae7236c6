"""Tokens/s of full-weight training in the checkout this runs in, old or new: bench.py --full_weights's work
(a 6-layer, 128-wide GPT-2, 8 x 128 tokens with the loss on the last 127, fused AdamW over every weight) timed
with nothing but `model.GPT`, so that a commit from before bench.py had the flag can be measured beside today's.

    cd OLD_CHECKOUT && python /path/to/scripts/time_full_weight_step.py float32    # or bfloat16
"""
import contextlib
import statistics
import sys
import time

sys.path.insert(0, ".")  # the checkout in the current directory, not the one this file is in
import torch  # noqa: E402

from common.memory import reuse_freed_memory  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def main(dtype_name: str, warmup: int = 1, steps: int = 5) -> None:
    dtype = getattr(torch, dtype_name)
    reuse_freed_memory()
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=6, n_head=4, n_embd=128, vocab_size=50257, block_size=256))
    optimizer = torch.optim.AdamW(gpt.parameters(), fused=True)
    tokens = torch.randint(0, 50256, (8, 129), generator=torch.Generator().manual_seed(0))
    idx, targets = tokens[:, :-1], tokens[:, 1:].clone()
    targets[:, :1] = -100

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext():
            _, loss = gpt(idx, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start
    for _ in range(warmup):
        step()
    print(f"{dtype_name}: {idx.numel() / statistics.median(step() for _ in range(steps)):,.0f} tokens/s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "float32")
