"""ckpt.pt: a run's training state (the method's trained tensors, AdamW, the iteration, every generator), read back
without running any code and checked to hold what train.py writes."""
import functools

import torch

from common.errors import UserError

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


def device_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The accelerator's own generator, from which dropout there draws, keyed by its kind; none on a CPU."""
    if device.type == "cuda":
        return {"cuda": torch.cuda.get_rng_state(device)}
    if device.type == "mps":
        return {"mps": torch.mps.get_rng_state()}
    return {}


def set_device_rng_state(device: torch.device, state: dict[str, torch.Tensor]) -> None:
    """Restore the generator device_rng_state saved, when the run resumes on the same kind of device."""
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])
