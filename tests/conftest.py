"""Fixtures shared by the tests: the ../shared folder (data, tokenizer files) and an isolated cache."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Downloads and tokenized data go to a temporary cache, never the user's."""
    os.environ["PREFIX_TUNING_CACHE"] = str(tmp_path_factory.mktemp("cache"))
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
