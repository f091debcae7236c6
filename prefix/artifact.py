"""The exported prefix: P alone (no MLP) in a .safetensors file, with what it was trained for.

This is what a trained task costs to keep: prefix_len × n_layer × 2 × n_embd numbers (about 0.1% of
GPT-2). Loading checks the metadata against the model, so a prefix is never run on a GPT it wasn't
trained for.
"""
from pathlib import Path

from common.errors import UserError
from model import safetensors
from model.gpt import GPTConfig
from prefix.ablations import InfixTuning
from prefix.tuning import PrefixTuning

FORMAT = "prefix-tuning/1"


def save_prefix(prefix: PrefixTuning, path, base_model: str, run: dict[str, str] | None = None) -> None:
    """Write P (prefix_len, n_layer·2·n_embd) and its metadata (with `run`: the run id and dataset), atomically."""
    P = prefix.activations().detach().cpu().contiguous()
    c = prefix.config
    metadata = dict(format=FORMAT, base_model=base_model, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                    prefix_len=prefix.prefix_len, placement=prefix.placement, dtype=str(P.dtype).removeprefix("torch."),
                    positions="from_zero" if prefix.positions_from_zero else "after_prefix", **(run or {}))
    safetensors.save_file({"prefix": P}, path, {k: str(v) for k, v in metadata.items()})


def prefix_metadata(path) -> dict[str, str]:
    """What an exported prefix was trained for (base_model, shape, prefix_len, positions, ...)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"there is no exported prefix at {path}")
    metadata = safetensors.load_metadata(path)
    if metadata.get("format") != FORMAT:
        raise UserError(f"{path} is not an exported prefix (its format is {str(metadata.get('format'))[:40]!r}, "
                        f"not {FORMAT})")
    return metadata


def load_prefix(path, config: GPTConfig | None = None) -> PrefixTuning:
    """An exported prefix, frozen, checked against the GPT it will steer (None: the GPT shape it names, to convert
    it without its GPT)."""
    meta = prefix_metadata(path)
    missing = [key for key in ("base_model", "n_layer", "n_head", "n_embd", "prefix_len", "placement", "positions")
               if key not in meta]
    if missing:
        raise UserError(f"{path} is damaged: its metadata lacks {', '.join(missing)}")
    for key, allowed in (("placement", ("prefix", "infix")), ("positions", ("after_prefix", "from_zero"))):
        if meta[key] not in allowed:
            raise UserError(f"{path} is damaged: its metadata's {key} is {meta[key][:40]!r}, not one of "
                            f"{', '.join(allowed)}")
    trained_for = tuple(_count(path, meta, key) for key in ("n_layer", "n_head", "n_embd"))
    if config is None:
        if trained_for[2] % trained_for[1]:
            raise UserError(f"{path} is damaged: its metadata's n_embd is no multiple of its n_head")
        config = GPTConfig(*trained_for)
    if trained_for != (config.n_layer, config.n_head, config.n_embd):
        raise UserError(f"{path} was trained for {meta['base_model']} ({describe(*trained_for)}), but this model "
                        f"has {describe(config.n_layer, config.n_head, config.n_embd)}; load it with "
                        f"--init_from {meta['base_model']}")
    tensors = safetensors.load_file(path)
    P = tensors.get("prefix")
    expected = (_count(path, meta, "prefix_len"), config.n_layer * 2 * config.n_embd)
    if tensors.keys() != {"prefix"} or P.shape != expected:
        raise UserError(f"{path} is damaged: it holds no prefix of the shape its metadata implies, {expected}")
    if not P.is_floating_point():
        raise UserError(f"{path} is damaged: its prefix holds {str(P.dtype).removeprefix('torch.')}, not floats")
    cls = InfixTuning if meta["placement"] == "infix" else PrefixTuning
    return cls.holding(config, P, positions_from_zero=meta["positions"] == "from_zero")


def _count(path, meta: dict[str, str], key: str) -> int:
    """A positive integer of the metadata (the shape a prefix was trained for)."""
    if not (meta[key].isascii() and meta[key].isdigit() and 0 < int(meta[key]) < 1 << 31):
        raise UserError(f"{path} is damaged: its metadata's {key} is {meta[key][:40]!r}, not a positive integer")
    return int(meta[key])


def describe(n_layer: int, n_head: int, n_embd: int) -> str:
    return f"{n_layer} layers, {n_head} heads, width {n_embd}"
