"""Fixtures shared by the tests: the ../shared folder (data, tokenizer files) and an isolated cache."""
import os
from pathlib import Path

import pytest

from model.cpu_kernels import ONEDNN_WORKS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# the float32 CPU fast path of model/cpu_kernels.py
needs_onednn = pytest.mark.skipif(not ONEDNN_WORKS, reason="no oneDNN path here: a CPU other than x86-64, a torch "
                                                           "without oneDNN, or its private op failed the check")
# a test's device: parametrize with DEVICES to run it on CPU and, where there is one, on a CUDA GPU
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda skip, with the reason, where torch sees no CUDA GPU."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu_check.sh "
                                   "runs these where there is one")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def on_device(module, device):
    """`module` itself on CPU; elsewhere a copy on `device`, so a shared fixture stays where it is."""
    import copy
    return module if str(device) == "cpu" else copy.deepcopy(module).to(device)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Downloads and tokenized data go to a temporary cache, never the user's; the user's Hugging Face cache, token
    and offline setting are out of sight."""
    os.environ["PREFIX_TUNING_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["HF_HUB_CACHE"] = str(tmp_path_factory.mktemp("hf-hub-cache"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        os.environ.pop(name, None)
    if SHARED.is_dir():
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken-cache"))


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("needs ../shared (the E2E/WebNLG data and GPT-2 BPE files), which CI provides")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer(shared):
    from model.tokenizer import from_files
    return from_files(shared / "gpt2" / "encoder.json", shared / "gpt2" / "vocab.bpe")


@pytest.fixture(scope="session")
def tiny_gpt2(shared, tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 with the real vocabulary, in the hub's layout with its tokenizer files."""
    from hub_checkpoint import write_tiny_gpt2
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), tokenizer_dir=shared / "gpt2")


def run_script(*args, timeout=300, env=None, **kwargs):
    """Run a project script (or `-m module`) from the repository root; returns the CompletedProcess."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, **kwargs)


def assert_drawn_png(path) -> None:
    """`path` is a PNG that decodes to a picture with something drawn on it, not one flat colour."""
    import matplotlib.image
    import numpy as np
    pixels = matplotlib.image.imread(path, format="png")
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 200, pixels.shape
    colours = np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)
    assert len(colours) > 50, f"{path} has only {len(colours)} colours"
    assert (pixels[..., :3] < 0.9).any(-1).mean() > 0.02, f"{path} is nearly blank"
