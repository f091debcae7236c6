"""Write the tiny random GPT-2 the tests train on: 2 layers, 2 heads, width 32, GPT-2's 50,257-token vocabulary.

    python -m scripts.tiny_gpt2 tiny-gpt2 --tokenizer_dir ../shared/gpt2

Its weights are random, so its texts are nonsense, but train.py, plot.py, sample.py and prefix.attention run on it
in seconds (the README's quick tour; tests/conftest.py's tiny_gpt2). The weights are 10x GPT-2's initial scale: at
0.02 the outputs are nearly uniform whatever the prefix, and training curves would show nothing. transformers
writes it in the hub's layout (tests/hub_checkpoint.py), so it needs requirements-dev.txt.
"""
import argparse
from pathlib import Path

import torch

from tests.hub_checkpoint import random_hf_gpt2, write_checkpoint


def write_tiny_gpt2(directory, tokenizer_dir=None) -> Path:
    """The checkpoint directory, with vocab.json and merges.txt copied from GPT-2's BPE files in tokenizer_dir
    (encoder.json, vocab.bpe) when given; without them the scripts use tiktoken's gpt2."""
    hf = random_hf_gpt2(n_layer=2, n_head=2, n_embd=32, vocab_size=50257, n_positions=256, seed=0)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.mul_(10)
    return write_checkpoint(hf, directory, tokenizer_dir=tokenizer_dir)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("directory", help="where to write config.json, model.safetensors (and the tokenizer files)")
    p.add_argument("--tokenizer_dir", default=None, help="a folder with GPT-2's encoder.json and vocab.bpe")
    args = p.parse_args()
    print(f"wrote {write_tiny_gpt2(args.directory, args.tokenizer_dir)}")
