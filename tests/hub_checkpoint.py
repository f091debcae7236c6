"""Random-weight GPT-2 checkpoints written the way the Hugging Face hub stores them (the test oracle)."""
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging

logging.set_verbosity_error()


def random_hf_gpt2(n_layer=2, n_head=3, n_embd=24, vocab_size=101, n_positions=64, n_inner=None, seed=0):
    """transformers' GPT2LMHeadModel with random weights, LayerNorm scales and shifts far from 1 and 0."""
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab_size, n_positions=n_positions,
                        n_inner=n_inner, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("transformer.ln_f"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
            elif name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.02)
    return model


def write_checkpoint(model, directory, layout="hub", fmt="safetensors", tokenizer_dir=None) -> Path:
    """Save `model` as a checkpoint directory.

    layout "hub": the original gpt2 files: keys without "transformer.", with the legacy attn.bias mask buffers
    (and attn.masked_bias in .bin), no lm_head. layout "transformers": what newer saves hold ("transformer."
    keys, lm_head.weight). fmt: "safetensors" or "bin". tokenizer_dir: copy vocab.json/merges.txt from the
    GPT-2 BPE files there (encoder.json/vocab.bpe).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(directory / "config.json")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "hub":
        state = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
        n = model.config.n_positions
        for i in range(model.config.n_layer):
            state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
            if fmt == "bin":
                state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    if tokenizer_dir is not None:
        shutil.copy(Path(tokenizer_dir) / "encoder.json", directory / "vocab.json")
        shutil.copy(Path(tokenizer_dir) / "vocab.bpe", directory / "merges.txt")
    return directory


def write_tiny_gpt2(directory, tokenizer_dir=None) -> Path:
    """The tiny random GPT-2 the tests train on (and docs/tour.md's, through scripts/tiny_gpt2.py): 2 layers,
    2 heads, width 32, GPT-2's vocabulary, in the hub's layout (with vocab.json and merges.txt when tokenizer_dir
    holds GPT-2's encoder.json and vocab.bpe).

    Its weights are 10x GPT-2's initial scale: at 0.02 the outputs are nearly uniform whatever the prefix, and
    training curves would show nothing.
    """
    hf = random_hf_gpt2(n_layer=2, n_head=2, n_embd=32, vocab_size=50257, n_positions=256, seed=0)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() > 1:
                p.mul_(10)
    return write_checkpoint(hf, directory, tokenizer_dir=tokenizer_dir)


def hf_cache_entry(cache, repo: str, files, commit: str, refs=("main",)) -> Path:
    """Put the files of the directory `files` into the Hugging Face cache `cache` at `commit` as huggingface_hub
    does, and return the snapshot: models--<owner>--<name>/blobs/<the file's hash> (sha256 for the weights, which
    the hub keeps in git LFS; git's blob sha1 for the rest), snapshots/<commit>/<file> -> ../../blobs/<hash>, and
    refs/<ref> holding the commit for each ref."""
    import hashlib
    models = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = models / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (models / "blobs").mkdir(exist_ok=True)
    for file in sorted(Path(files).iterdir()):
        data = file.read_bytes()
        blob = (hashlib.sha256(data) if file.suffix in (".safetensors", ".bin")
                else hashlib.sha1(b"blob %d\0" % len(data) + data)).hexdigest()
        (models / "blobs" / blob).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob))
    for ref in refs:
        (models / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (models / "refs" / ref).write_text(commit)
    return snapshot
