"""The measurements behind bench.py and bench_peft.py: what is measured (work.py) and how (timing.py)."""
