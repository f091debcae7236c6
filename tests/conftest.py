"""Fixtures shared by the tests: the data and tokenizer files (../shared where it is there, else the small copies in
tests/fixtures) and an isolated cache."""
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from model.cpu_kernels import ONEDNN_WORKS

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = ROOT / "tests" / "fixtures"
GET_THE_FULL_DATA = ("needs the full datasets: put a folder shared/ beside the repository with "
                     "data/e2e/e2e-dataset.zip (E2E v1.0.0, github.com/tuetschek/e2e-dataset/releases), data/webnlg/ "
                     "(WebNLG 2017) and the rest that tests/fixtures/README.md lists")
# the float32 CPU fast path of model/cpu_kernels.py
needs_onednn = pytest.mark.skipif(not ONEDNN_WORKS, reason="no oneDNN path here: a CPU other than x86-64, a torch "
                                                           "without oneDNN, or its private op failed the check")
# a test's device: parametrize with DEVICES to run it on CPU and, where there is one, on a CUDA GPU
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_addoption(parser):
    parser.addoption("--without-shared", action="store_true",
                     help="test as a fresh clone does: the small data of tests/fixtures even where ../shared is there")


def has_shared(config) -> bool:
    return SHARED.is_dir() and not config.getoption("--without-shared")


def pytest_collection_modifyitems(config, items):
    """Tests marked cuda skip, with the reason, where torch sees no CUDA GPU; those marked full_data where ../shared
    is absent (the fixtures stand in for it elsewhere)."""
    import torch
    skips = {"cuda": None if torch.cuda.is_available() else pytest.mark.skip(
                 reason="needs a CUDA GPU (torch.cuda.is_available() is False); scripts/gpu_check.sh runs these where "
                        "there is one"),
             "full_data": None if has_shared(config) else pytest.mark.skip(reason=GET_THE_FULL_DATA)}
    for item in items:
        for marker, skip in skips.items():
            if skip and item.get_closest_marker(marker):
                item.add_marker(skip)


def on_device(module, device):
    """`module` itself on CPU; elsewhere a copy on `device`, so a shared fixture stays where it is."""
    import copy
    return module if str(device) == "cpu" else copy.deepcopy(module).to(device)


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory, gpt2_dir):
    """Downloads and tokenized data go to a temporary cache, never the user's; the user's Hugging Face cache, token
    and offline setting are out of sight; tiktoken's "gpt2" reads the BPE files of gpt2_dir, never the network."""
    os.environ["PREFIX_TUNING_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["HF_HUB_CACHE"] = str(tmp_path_factory.mktemp("hf-hub-cache"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        os.environ.pop(name, None)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(tiktoken_cache(gpt2_dir, tmp_path_factory.mktemp("tiktoken"))))


def tiktoken_cache(gpt2_dir: Path, folder: Path) -> Path:
    """A TIKTOKEN_CACHE_DIR holding GPT-2's two files: tiktoken caches a file under the SHA-1 of its URL."""
    import hashlib
    for name in ("encoder.json", "vocab.bpe"):
        url = f"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{name}"
        shutil.copyfile(gpt2_dir / name, folder / hashlib.sha1(url.encode()).hexdigest())
    return folder


@pytest.fixture(scope="session")
def shared(pytestconfig) -> Path:
    """../shared, for the tests that need the full datasets: their exact sizes, or the authors' files."""
    if not has_shared(pytestconfig):
        pytest.skip(GET_THE_FULL_DATA)
    return SHARED


@pytest.fixture(scope="session")
def gpt2_dir(pytestconfig) -> Path:
    """GPT-2's BPE files, encoder.json and vocab.bpe: ../shared/gpt2, else the same files in tests/fixtures/gpt2."""
    return SHARED / "gpt2" if has_shared(pytestconfig) else FIXTURES / "gpt2"


@pytest.fixture(scope="session")
def e2e_dir(pytestconfig, tmp_path_factory) -> Path:
    """A folder holding e2e-dataset.zip: the E2E release in ../shared, else the fixture's rows zipped in its layout
    (e2e-dataset/*.csv)."""
    if has_shared(pytestconfig):
        return SHARED / "data" / "e2e"
    folder = tmp_path_factory.mktemp("e2e")
    with zipfile.ZipFile(folder / "e2e-dataset.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((FIXTURES / "e2e" / "e2e-dataset").iterdir()):
            archive.write(path, f"e2e-dataset/{path.name}")
    return read_only(folder)


@pytest.fixture(scope="session")
def webnlg_dir(pytestconfig, tmp_path_factory) -> Path:
    """WebNLG 2017's train/, dev/ and test/ XML: ../shared's, else a copy of the fixture's entries."""
    if has_shared(pytestconfig):
        return SHARED / "data" / "webnlg"
    folder = tmp_path_factory.mktemp("webnlg") / "webnlg"
    shutil.copytree(FIXTURES / "webnlg", folder)
    return read_only(folder)


def read_only(folder: Path) -> Path:
    """Make the fixture data read-only as ../shared is, so that tokenized splits go to the user cache there too."""
    for path in sorted(folder.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    folder.chmod(0o555)
    return folder


@pytest.fixture(scope="session")
def tokenizer(gpt2_dir):
    from model.tokenizer import from_files
    return from_files(gpt2_dir / "encoder.json", gpt2_dir / "vocab.bpe")


@pytest.fixture(scope="session")
def tiny_gpt2(gpt2_dir, tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 with the real vocabulary, in the hub's layout with its tokenizer files."""
    from hub_checkpoint import write_tiny_gpt2
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), tokenizer_dir=gpt2_dir)


@pytest.fixture(scope="session")
def trained_run(tiny_gpt2, e2e_dir, tmp_path_factory):
    """A prefix trained 8 iterations on the tiny GPT-2, once for every test that decodes or looks at it (they may
    add an eval/ folder, never change what train.py wrote)."""
    import train
    out = tmp_path_factory.mktemp("run")
    result = run_main(train.main, "--init_from", tiny_gpt2, "--data_dir", e2e_dir,
                      "--out_dir", out, "--max_iters", "8", "--eval_interval", "8", "--eval_iters", "2",
                      "--batch_size", "4", "--learning_rate", "1e-2")
    assert result.returncode == 0, result.stderr
    return out


def run_main(main, *args) -> "subprocess.CompletedProcess":
    """A script's main(argv) called in this process, as `python script.py ARGS` runs it without starting Python and
    importing torch again: its stdout, stderr and exit status (SystemExit's code, 0 when it returns). Gradients are on,
    as in a new process, whatever the test is under; the global RNG and the Ctrl-C handler, which train.py sets, are
    put back. Where the command line itself is tested (a signal,
    torchrun, the interpreter's exit), use run_script."""
    import contextlib
    import io
    import signal
    import subprocess
    import torch
    argv, out, err = [str(a) for a in args], io.StringIO(), io.StringIO()
    ctrl_c, code = signal.getsignal(signal.SIGINT), 0
    try:
        with torch.enable_grad(), torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        signal.signal(signal.SIGINT, ctrl_c)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def run_script(*args, timeout=300, env=None, **kwargs):
    """Run a project script (or `-m module`) from the repository root in a new process; returns the
    CompletedProcess."""
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
