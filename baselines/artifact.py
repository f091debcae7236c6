"""Building a baseline by name, and its export: only what it trained.

Fine-tuning changed every weight, so its export is a whole GPT-2 checkpoint directory (model/, loaded by
--init_from, sample.py and transformers alike). FT-top2, adapters and LoRA export their trained tensors alone in
tuned.safetensors, with the settings that rebuild the modules they live in.
"""
from __future__ import annotations

from pathlib import Path

from baselines.adapters import Adapters
from baselines.common import ChangesTheGPT
from baselines.finetune import FineTuning
from baselines.lora import LoRA
from common.errors import UserError
from model import safetensors
from model.gpt import GPT

FORMAT = "prefix-tuning-baseline/1"
BASELINES = ("finetune", "finetune-top", "adapter", "lora")
SETTINGS = {"finetune": (), "finetune-top": ("top_blocks",), "adapter": ("adapter_dim",),
            "lora": ("lora_rank", "lora_alpha")}  # the settings each baseline's modules are built from


def build_baseline(mode: str, gpt: GPT, settings: dict) -> ChangesTheGPT:
    """The trainable method for a --tuning_mode other than prefix; adapters and LoRA are inserted into `gpt`."""
    if mode == "finetune":
        return FineTuning(gpt)
    if mode == "finetune-top":
        return FineTuning(gpt, int(settings["top_blocks"]))
    if mode == "adapter":
        return Adapters(gpt, int(settings["adapter_dim"]))
    if mode == "lora":
        return LoRA(gpt, int(settings["lora_rank"]), float(settings["lora_alpha"]))
    raise ValueError(f"unknown baseline {mode!r}")


def save_tuned(method: ChangesTheGPT, path, mode: str, settings: dict, base_model: str,
               dataset: str | None = None) -> None:
    """FT-top2, adapters, LoRA: their state_dict and how to rebuild them (and the dataset they were trained on,
    when given), atomically."""
    c = method.frozen_gpt[0].config
    metadata = dict(format=FORMAT, tuning_mode=mode, base_model=base_model, n_layer=c.n_layer, n_head=c.n_head,
                    n_embd=c.n_embd, **{name: settings[name] for name in SETTINGS[mode]},
                    **({"dataset": dataset} if dataset else {}))
    safetensors.save_file({k: v.detach().cpu() for k, v in method.state_dict().items()}, path,
                          {k: str(v) for k, v in metadata.items()})


def load_tuned(path, gpt: GPT) -> ChangesTheGPT:
    """An exported baseline applied to `gpt` (its base model), frozen for decoding."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"there is no exported baseline at {path}")
    meta = safetensors.load_metadata(path)
    mode = meta.get("tuning_mode")
    if meta.get("format") != FORMAT or mode not in SETTINGS or any(k not in meta for k in SETTINGS[mode]):
        raise UserError(f"{path} is not an exported baseline of this project (format "
                        f"{str(meta.get('format'))[:40]!r})")
    c = gpt.config
    if (meta.get("n_layer"), meta.get("n_head"), meta.get("n_embd")) != (str(c.n_layer), str(c.n_head), str(c.n_embd)):
        raise UserError(f"{path} was trained for {str(meta.get('base_model'))[:80]}, a model of another shape; load "
                        f"it with --init_from {str(meta.get('base_model'))[:80]}")
    settings = {name: _setting(path, meta, name, c) for name in SETTINGS[mode]}
    tensors = safetensors.load_file(path)
    not_float = next((name for name, t in tensors.items() if not t.is_floating_point()), None)
    if not_float is not None:
        raise UserError(f"{path} is damaged: its tensor {not_float[:80]!r} holds "
                        f"{str(tensors[not_float].dtype).removeprefix('torch.')}, not floats")
    method = build_baseline(mode, gpt, settings)
    try:
        method.load_state_dict(tensors)
    except RuntimeError:  # missing or unexpected tensors, or a shape that disagrees
        raise UserError(f"{path} is damaged: its tensors are not those of a {mode} run of this shape") from None
    return method.requires_grad_(False).eval()


# the settings' sane ranges for a GPT of config c: a damaged value is refused before it sizes any module
# (train.py takes any positive bottleneck or rank, e.g. a 3% adapter on a narrow model is wider than 4 * n_embd: the
# bound is what the file can hold, each unit costing at least 2 bytes per number, 2 * n_embd numbers per layer for
# an adapter (a row of W_down, a column of W_up) and 4 * n_embd for LoRA (a row of A, a column of B))
RANGES = {"top_blocks": lambda c, size: (1, c.n_layer),
          "adapter_dim": lambda c, size: (1, max(1, size // (2 * 2 * c.n_embd * c.n_layer))),
          "lora_rank": lambda c, size: (1, max(1, size // (2 * 4 * c.n_embd * c.n_layer))),
          "lora_alpha": lambda c, size: (1e-6, 1e6)}


def _setting(path: Path, meta: dict[str, str], name: str, c) -> int | float:
    """A setting of the export's metadata, parsed and checked against its range."""
    low, high = RANGES[name](c, path.stat().st_size)
    try:
        value = float(meta[name]) if name == "lora_alpha" else int(meta[name])
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise UserError(f"{path} is damaged: its metadata's {name} is {meta[name][:40]!r}, not a number from {low} "
                        f"to {high}")
    return value
