"""Write the tiny random GPT-2 the tests train on: 2 layers, 2 heads, width 32, GPT-2's 50,257-token vocabulary.

    python scripts/tiny_gpt2.py out-tour/tiny-gpt2 --tokenizer_dir ../shared/gpt2

Its weights are random, so its texts are nonsense, but train.py, plot.py, sample.py and prefix.attention run on it
in seconds (the tour, docs/tour.md). The tests' oracle writes it (tests/hub_checkpoint.py: transformers' GPT-2 saved in
the hub's layout), so it needs requirements-dev.txt. Without --tokenizer_dir the scripts use tiktoken's gpt2.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hub_checkpoint import write_tiny_gpt2  # noqa: E402  (the very builder of tests/conftest.py's tiny_gpt2)

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="where to write config.json and model.safetensors (and the tokenizer files)")
    p.add_argument("--tokenizer_dir", default=None, help="a folder with GPT-2's encoder.json and vocab.bpe")
    args = p.parse_args()
    print(f"wrote {write_tiny_gpt2(args.directory, args.tokenizer_dir)}")
