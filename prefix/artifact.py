"""The exported prefix: P alone (no MLP) in a .safetensors file, with what it was trained for.

This is what a trained task costs to keep: prefix_len × n_layer × 2 × n_embd numbers (about 0.1% of
GPT-2). Loading checks the metadata against the model, so a prefix is never run on a GPT it wasn't
trained for.
"""
import functools
from pathlib import Path

import torch

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


# What train.py's ckpt.pt holds: each key and the test its value passes.
CHECKPOINT = {
    "run_id": lambda v: isinstance(v, str) and 0 < len(v) <= 64,
    "iter": lambda v: type(v) is int and v >= 0,
    "best_val_loss": lambda v: type(v) in (int, float),
    "trained": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                     for k, t in v.items()),
    "optimizer": lambda v: isinstance(v, dict) and v.keys() == {"state", "param_groups"}
                           and isinstance(v["state"], dict) and isinstance(v["param_groups"], list)
                           and all(_adamw_group(g) for g in v["param_groups"])
                           and all(type(k) is int and _adamw_state(s) for k, s in v["state"].items()),
    "rng": lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == torch.get_rng_state().shape for t in v),
    "device_rng": lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(d, dict) and all(k in ("cuda", "mps") and isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                    for k, t in d.items()) for d in v),
    "args": lambda v: isinstance(v, dict) and isinstance(v.get("init_from"), str)
                      and all(isinstance(k, str) for k in v),
    "config": lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
}
WHAT = {"run_id": "a run id", "iter": "a count of iterations", "best_val_loss": "a number", "trained": "a state dict of tensors",
        "optimizer": "an optimizer's state dict", "rng": "one generator state per process",
        "device_rng": "one accelerator generator state (or none) per process",
        "args": "the run's settings", "config": "the GPT's config"}


ADAMW_NEEDS = {"params", "lr", "betas", "eps", "weight_decay"}  # of an AdamW param group's keys


@functools.cache
def _adamw_keys() -> set[str]:
    """The keys of an AdamW param group that this torch writes (older ones write fewer). Found on first use, not at
    import: making an optimizer imports torch._dynamo, seconds that a process which only decodes need not spend."""
    return {*torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).state_dict()["param_groups"][0], "param_names"}


def _adamw_group(group) -> bool:
    return (isinstance(group, dict) and ADAMW_NEEDS <= group.keys() <= _adamw_keys()
            and isinstance(group["params"], list) and all(type(i) is int for i in group["params"])
            and all(type(group[k]) in (int, float) or isinstance(group[k], torch.Tensor) for k in ("lr", "eps",
                                                                                               "weight_decay"))
            and isinstance(group["betas"], (list, tuple)) and len(group["betas"]) == 2)


def _adamw_state(state) -> bool:
    return (isinstance(state, dict) and all(isinstance(t, torch.Tensor) for t in state.values())
            and {"step", "exp_avg", "exp_avg_sq"} <= state.keys() and state["exp_avg"].shape == state["exp_avg_sq"].shape)


def _optimizer_fits(checkpoint: dict) -> bool:
    """The optimizer's state is for parameters of the trained tensors' shapes, each listed in one group."""
    optimizer = checkpoint["optimizer"]
    params = [i for group in optimizer["param_groups"] for i in group["params"]]
    shapes = sorted(tuple(t.shape) for t in checkpoint["trained"].values())
    moments = sorted(tuple(s["exp_avg"].shape) for s in optimizer["state"].values())
    return (len(set(params)) == len(params) and optimizer["state"].keys() <= set(params)
            and all(shape in shapes for shape in moments) and len(params) <= len(shapes))


def read_training_checkpoint(path) -> dict:
    """train.py's ckpt.pt (P', the MLP, AdamW, the schedule and RNG state), read without running any code and
    checked to hold what train.py writes.

    Memory-mapped, so a caller that needs only the run's settings does not read the optimizer's tensors.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a damaged file raises one of many types
        raise UserError(f"{path} could not be read ({type(e).__name__}); it may be damaged") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not a checkpoint of train.py: it holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in CHECKPOINT if key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not a checkpoint of train.py: it lacks {', '.join(missing)}")
    wrong = next((key for key, test in CHECKPOINT.items() if not test(checkpoint[key])), None)
    if wrong:
        raise UserError(f"{path} is damaged: its {wrong} is not {WHAT[wrong]}")
    if not _optimizer_fits(checkpoint):
        raise UserError(f"{path} is damaged: its optimizer's state does not fit the trained tensors")
    return checkpoint


def restore_training_state(path, checkpoint: dict, method, optimizer=None) -> None:
    """Put a checked ckpt.pt's trained tensors (and AdamW's state) into a freshly built method; tensors that do not
    fit the method its settings describe are one sentence."""
    try:
        method.load_state_dict(checkpoint["trained"])
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # missing or unexpected tensors, other shapes, other groups
        raise UserError(f"{path} is damaged: its tensors do not fit the method its settings describe "
                        f"({type(e).__name__})") from None


def describe(n_layer: int, n_head: int, n_embd: int) -> str:
    return f"{n_layer} layers, {n_head} heads, width {n_embd}"
