"""The exported prefix: P alone (no MLP) in a .safetensors file, with what it was trained for.

This is what a trained task costs to keep: prefix_len × n_layer × 2 × n_embd numbers (about 0.1% of
GPT-2). Loading checks the metadata against the model, so a prefix is never run on a GPT it wasn't
trained for.
"""
from pathlib import Path

import torch

from common.errors import UserError
from model import safetensors
from model.gpt import GPTConfig
from prefix.ablations import InfixTuning
from prefix.tuning import PrefixTuning

FORMAT = "prefix-tuning/1"


def save_prefix(prefix: PrefixTuning, path, base_model: str) -> None:
    """Write P (prefix_len, n_layer·2·n_embd) and its metadata, atomically."""
    P = prefix.activations().detach().cpu().contiguous()
    c = prefix.config
    metadata = dict(format=FORMAT, base_model=base_model, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                    prefix_len=prefix.prefix_len, placement=prefix.placement, dtype=str(P.dtype).removeprefix("torch."),
                    positions="from_zero" if prefix.positions_from_zero else "after_prefix")
    safetensors.save_file({"prefix": P}, path, {k: str(v) for k, v in metadata.items()})


def prefix_metadata(path) -> dict[str, str]:
    """What an exported prefix was trained for (base_model, shape, prefix_len, positions, ...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"there is no exported prefix at {path}")
    metadata = safetensors.load_metadata(path)
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not an exported prefix (its format is {metadata.get('format')!r}, not {FORMAT})")
    return metadata


def load_prefix(path, config: GPTConfig) -> PrefixTuning:
    """An exported prefix, frozen, checked against the GPT it will steer."""
    meta = prefix_metadata(path)
    missing = [key for key in ("base_model", "n_layer", "n_head", "n_embd", "prefix_len", "placement", "positions")
               if key not in meta]
    if missing or meta["placement"] not in ("prefix", "infix"):
        raise UserError(f"{path} is damaged: its metadata lacks {', '.join(missing) or 'a known placement'}")
    trained_for = (int(meta["n_layer"]), int(meta["n_head"]), int(meta["n_embd"]))
    if trained_for != (config.n_layer, config.n_head, config.n_embd):
        raise UserError(f"{path} was trained for {meta['base_model']} ({describe(*trained_for)}), but this model "
                        f"has {describe(config.n_layer, config.n_head, config.n_embd)}; load it with "
                        f"--init_from {meta['base_model']}")
    P = safetensors.load_file(path).get("prefix")
    expected = (int(meta["prefix_len"]), config.n_layer * 2 * config.n_embd)
    if P is None or P.shape != expected:
        raise UserError(f"{path} is damaged: it holds no prefix of the shape its metadata implies, {expected}")
    cls = InfixTuning if meta["placement"] == "infix" else PrefixTuning
    return cls.holding(config, P, positions_from_zero=meta["positions"] == "from_zero")


def read_training_checkpoint(path) -> dict:
    """train.py's ckpt.pt (P', the MLP, AdamW, the schedule and RNG state), read without running any code.

    Memory-mapped, so a caller that needs only the run's settings does not read the optimizer's tensors.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a damaged file raises one of many types
        raise UserError(f"{path} could not be read ({type(e).__name__}); it may be damaged") from None


def describe(n_layer: int, n_head: int, n_embd: int) -> str:
    return f"{n_layer} layers, {n_head} heads, width {n_embd}"
