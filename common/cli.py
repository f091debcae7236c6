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
    """argparse, but a bad flag is one sentence (a UserError) rather than the usage text."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=ShowDefaults, **kwargs)

    def error(self, message):
        raise UserError(f"{message} (see --help)")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """auto: the first of cuda, mps, cpu that this machine has."""
    if name == "auto":
        name = f"cuda:{local_rank}" if torch.cuda.is_available() else \
            "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bfloat16 on a GPU that supports it, else float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass (the weights stay float32), or nothing for float32."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
