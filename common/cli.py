"""What the scripts share: an argument parser whose errors are one sentence, and device/precision choice."""
import argparse
from contextlib import nullcontext

import torch

from common.errors import UserError


class ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each default, except None (whose meaning the help text gives)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one sentence (a UserError) rather than the usage text, and flags are spelled
    out: an abbreviation would slip past train.py's check of the flags a resumed run was given."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=ShowDefaults, allow_abbrev=False, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def check_ranges(args: argparse.Namespace, positive=(), at_least_zero=()) -> None:
    """A UserError for the first flag out of its range (flags left at None are not checked)."""
    for name in positive:
        value = getattr(args, name)
        if value is not None and value <= 0:
            kind = "integer" if isinstance(value, int) else "number"
            raise UserError(f"--{name} must be a positive {kind}, got {value}")
    for name in at_least_zero:
        value = getattr(args, name)
        if value is not None and value < 0:
            raise UserError(f"--{name} must be 0 or more, got {value}")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: the first of cuda, mps, cpu that this machine has. A bare cuda means this process's GPU (torchrun's
    LOCAL_RANK), which becomes the current device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but PyTorch sees no MPS device")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise UserError(f"there is no {device}: PyTorch sees {torch.cuda.device_count()} CUDA GPU(s)")
        torch.cuda.set_device(device)
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it, else float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass (the weights stay float32), or nothing for float32."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
