"""The datasets by name, each one module with the same few names: source_files(split, data_dir) (what a split is
read from), load(split, data_dir, for_training) (its Examples) and TRAINING (the training settings train.py
defaults to). A new dataset is a module and a line here."""
from pathlib import Path

from common import UserError
from data import dart, e2e, jsonl, webnlg
from data.e2e_authors import authors_examples
from data.example import Example

DATASETS = {"e2e": e2e, "webnlg": webnlg, "dart": dart, "jsonl": jsonl}
SPLITS = ("train", "dev", "test")
TEXT_FORMS = ("official", "authors")  # E2E references as released, or as the paper's authors tokenized them


def load_examples(dataset: str, split: str, data_dir: str | Path | None = None, *,
                  for_training: bool = False, text_form: str = "official") -> list[Example]:
    """The split's tables with their references. data_dir may be None for E2E (downloaded once into the user cache);
    the others need it. for_training keeps only the references the paper trains on (see webnlg.load). text_form
    "authors" rewrites E2E references as the authors' files hold them (see e2e_authors)."""
    check_text_form(dataset, text_form)
    examples = _module(dataset, split).load(split, data_dir, for_training)
    return examples if text_form == "official" else authors_examples(examples, split)


def check_text_form(dataset: str, text_form: str) -> None:
    """--e2e_text: a known form, and other than the official one for E2E alone."""
    if text_form not in TEXT_FORMS:
        raise UserError(f"unknown text form {text_form!r}; choose {' or '.join(TEXT_FORMS)}")
    if text_form != "official" and dataset != "e2e":
        raise UserError(f"--e2e_text {text_form} rewrites E2E references: the authors' text form exists for E2E only, "
                        f"not {dataset}; leave it at official")


def source_files(dataset: str, split: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files the split is read from (what its tokenized cache depends on)."""
    return _module(dataset, split).source_files(split, data_dir)


def _module(dataset: str, split: str):
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose {', '.join(SPLITS)}")
    return DATASETS[dataset]
