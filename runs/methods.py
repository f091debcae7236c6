"""Every method behind one interface: prefix-tuning and its ablations (prefix/), and the baselines (baselines/).

A method is an nn.Module, and train.py and sample.py use only this of it:
  method(batch_size)                        the prefix's per-layer (K, V), or None for a baseline (DDP calls it)
  method.parameters()                       those with requires_grad are the ones AdamW trains
  method.loss(gpt, idx, targets, kv)        eq. (2): the mean −log p over the target tokens
  method.start_decoding(gpt, prompt, mask)  a KV cache, the prompt still to read, and its mask
  method.export()                           the form that decodes (a prefix: P computed once, no MLP)
  method.report(gpt_parameters)             what it trains and what its export stores
This module builds one from a run's settings (train.py's flags), and writes and loads its export.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from baselines import BASELINES, ChangesTheGPT, build_baseline, load_tuned, save_tuned
from common import UserError
from model import GPT, safetensors
from model.loading import checkpoint_dir, save_pretrained
from model.tokenizer import get_tokenizer
from prefix import build_prefix, freeze, init_from_text, init_text_ids, load_prefix, prefix_metadata, save_prefix

METHODS = ("prefix", *BASELINES)  # --tuning_mode
PREFIX_FLAGS = ("variant", "init_text", "positions_from_zero")  # the settings that shape a prefix
# The file each kind of method exports; "_best" goes before the suffix for the export at the best validation loss.
EXPORTS = {"prefix": "prefix.safetensors", "finetune": "model", "finetune-top": "tuned.safetensors",
           "adapter": "tuned.safetensors", "lora": "tuned.safetensors"}


def check_settings(settings: dict) -> None:
    """What train.py's flags may not combine, said before anything is built."""
    mode = settings["tuning_mode"]
    if mode != "prefix" and (settings["variant"] != "prefix" or settings["init_text"] or
                             settings["positions_from_zero"]):
        raise UserError(f"--variant, --init_text and --positions_from_zero shape a prefix; --tuning_mode {mode} "
                        f"has none")


def default_loss_reduction(mode: str) -> str:
    """The authors': each text's losses summed for prefix-tuning (their objective_mode=1); for the baselines the mean
    per token, as their GPT-2 computes its own loss."""
    return "sentence" if mode == "prefix" else "token"


def build_method(settings: dict, gpt: GPT) -> nn.Module:
    """What --tuning_mode trains, from a run's settings: a prefix (or one of its ablations), or a baseline inside
    `gpt`."""
    if settings["tuning_mode"] == "prefix":
        return build_prefix(settings["variant"], gpt, settings["prefix_len"], settings["mid_dim"], settings["reparam"],
                            settings["prefix_dropout"], settings["positions_from_zero"])
    return build_baseline(settings["tuning_mode"], gpt, settings)


def positions_taken(settings: dict) -> int:
    """The model positions a method takes before the text: a prefix's length; a baseline takes none."""
    return settings["prefix_len"] if settings["tuning_mode"] == "prefix" else 0


def initialize(method: nn.Module, gpt: GPT, settings: dict, tokenizer) -> None:
    """A new run's prefix starts from --init_text's activations, when given."""
    if settings.get("init_text"):
        init_from_text(method, gpt, init_text_ids(settings["init_text"], tokenizer))


def export_name(mode: str, best: bool) -> str:
    """prefix.safetensors, tuned.safetensors or model; with best, prefix_best.safetensors and so on."""
    name = Path(EXPORTS[mode])
    return f"{name.stem}_best{name.suffix}" if best else name.name


def export_names(best: bool) -> list[str]:
    """The final (or best) export's name for every kind of method, each name once."""
    return list(dict.fromkeys(export_name(mode, best) for mode in EXPORTS))


def save_export(method: nn.Module, gpt: GPT, path: Path, settings: dict, tokenizer, run: dict[str, str]) -> None:
    """What the method trained, and only that: P (no MLP), a baseline's tensors, or a whole fine-tuned GPT; `run`
    (the run id and the data it was trained on) goes into its metadata."""
    mode = settings["tuning_mode"]
    if mode == "prefix":
        save_prefix(method.export(), path, settings["init_from"], run)
    elif mode == "finetune":
        save_pretrained(gpt, path, tokenizer, run)
    else:
        save_tuned(method, path, mode, settings, settings["init_from"], run)


def is_prefix(path: Path) -> bool:
    return path.name in (export_name("prefix", best=False), export_name("prefix", best=True))


def export_metadata(path: Path) -> dict[str, str]:
    """The metadata train.py wrote into an export: a prefix's, a baseline's, or a fine-tuned GPT's weights file."""
    if path.is_dir():
        return safetensors.load_metadata(path / "model.safetensors")
    return prefix_metadata(path) if is_prefix(path) else safetensors.load_metadata(path)


def load_export(path: Path, base_model: str | None, device) -> tuple[GPT, nn.Module, object]:
    """The GPT, the exported method on it ready to decode, and the tokenizer. A fine-tuned GPT is the export itself;
    a prefix and a baseline's tensors go on `base_model`."""
    if path.is_dir():
        gpt, tokenizer = load_gpt(str(path), device)
        return gpt, ChangesTheGPT(gpt), tokenizer
    gpt, tokenizer = load_gpt(base_model, device)
    method = load_prefix(path, gpt.config) if is_prefix(path) else load_tuned(path, gpt)
    return gpt, method.to(device), tokenizer


def load_gpt(base_model: str, device) -> tuple[GPT, object]:
    """A frozen pretrained GPT on `device`, and its tokenizer."""
    directory = checkpoint_dir(base_model)
    return freeze(GPT.from_pretrained(str(directory)).to(device)), get_tokenizer(directory)
