"""Tokenize a split once. The sequences are saved beside the data (or in the user cache when that folder is
read-only) under a key of everything they depend on (the files' contents, the format, the tokenizer), so a changed
file, format or tokenizer is never served stale tokens, and a crash while saving leaves no file that a later run
would read."""
import hashlib
import os
from pathlib import Path

import tiktoken

from common import UserError, atomic_path, cache_dir
from data.datasets import load_examples, source_files
from data.tokens import Sequences

FORMAT = 1  # bump when the linearization or the sequence layout changes, so old caches stop matching
PROBE = " name : Café | price : £ 20 - 25 <|endoftext|> Hello, world! <|endoftext|>"  # fingerprints a tokenizer


def tokenized_split(dataset: str, split: str, tokenizer: tiktoken.Encoding,
                    data_dir: str | Path | None = None, text_form: str = "official") -> Sequences:
    """The split's training sequences, one per (table, reference) pair, from the cache when it is there.
    text_form is load_examples's."""
    [sequences] = tokenized_splits(dataset, (split,), tokenizer, data_dir, text_form)
    return sequences


def tokenized_splits(dataset: str, splits, tokenizer: tiktoken.Encoding, data_dir: str | Path | None = None,
                     text_form: str = "official") -> list[Sequences]:
    """tokenized_split of each split, every one read (and so checked) before any is saved: a mistake in one split
    leaves no cache of another behind."""
    paths = [_cache_path(dataset, split, source_files(dataset, split, data_dir), tokenizer, text_form)
             for split in splits]
    cached = [_cached(path, tokenizer) for path in paths]
    built = [sequences or Sequences.from_pairs(tokenizer, [
                (ex.table, ref) for ex in load_examples(dataset, split, data_dir, for_training=True,
                                                        text_form=text_form) for ref in ex.references])
             for split, sequences in zip(splits, cached)]
    for path, sequences, old in zip(paths, built, cached):
        if old is None:
            with atomic_path(path) as tmp:
                sequences.save(tmp)
    return built


def _cached(path: Path, tokenizer: tiktoken.Encoding) -> Sequences | None:
    """The sequences saved at path, or None when there are none that this tokenizer could have made."""
    if not path.exists():
        return None
    try:
        sequences = Sequences.load(path)
    except UserError:  # a damaged or foreign file: built again, and replaced
        return None
    return sequences if sequences.eot == tokenizer.eot_token and (sequences.tokens < tokenizer.n_vocab).all() else None


def _cache_path(dataset: str, split: str, files: list[Path], tokenizer: tiktoken.Encoding, text_form: str) -> Path:
    sources = [_digest(f) for f in files]  # the bytes, not a name or a date: a copy is the same data, an edit is not
    vocabulary = (tokenizer.name, tokenizer.n_vocab, tokenizer.encode(PROBE, allowed_special="all"))
    key = hashlib.sha256(repr((FORMAT, dataset, split, text_form, sources, vocabulary)).encode()).hexdigest()[:16]
    folder = Path(os.path.commonpath([f.parent for f in files]))
    if not _writable(folder):
        folder = cache_dir("data", dataset)
    return folder / f"{dataset}-{split}-tokens-{key}.npz"


def _digest(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None


def _writable(folder: Path) -> bool:
    # os.access answers yes to root everywhere but on read-only mounts; a folder without write bits is read-only
    # by intent (like a shared data copy), so root leaves it alone too.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
