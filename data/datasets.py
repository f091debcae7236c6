"""The datasets by name: which files a split is read from, and its Examples."""
from pathlib import Path

from common import UserError
from data import e2e, webnlg
from data.example import Example

DATASETS = {"e2e": e2e, "webnlg": webnlg}
SPLITS = ("train", "dev", "test")


def load_examples(dataset: str, split: str, data_dir: str | Path | None = None, *,
                  for_training: bool = False) -> list[Example]:
    """The split's tables with their references. data_dir may be None for E2E (downloaded once into the user cache);
    WebNLG needs it. for_training keeps only the references the paper trains on (see webnlg.load)."""
    return _module(dataset, split).load(split, data_dir, for_training)


def source_files(dataset: str, split: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files the split is read from (what its tokenized cache depends on)."""
    return _module(dataset, split).source_files(split, data_dir)


def _module(dataset: str, split: str):
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose {' or '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose {', '.join(SPLITS)}")
    return DATASETS[dataset]
