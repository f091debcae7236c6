"""Tokenize a split once. The sequences are saved beside the data (or in the user cache when that folder is
read-only) under a key of everything they depend on, so a changed file, format or tokenizer is never served
stale tokens, and a crash while saving leaves no file that a later run would read."""
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
    files = source_files(dataset, split, data_dir)
    path = _cache_path(dataset, split, files, tokenizer, text_form)
    if path.exists():
        try:
            sequences = Sequences.load(path)
            if sequences.eot == tokenizer.eot_token and (sequences.tokens < tokenizer.n_vocab).all():
                return sequences
        except UserError:  # a damaged or foreign file: built again below, and replaced
            pass
    examples = load_examples(dataset, split, data_dir, for_training=True, text_form=text_form)
    sequences = Sequences.from_pairs(tokenizer, [(ex.table, ref) for ex in examples for ref in ex.references])
    with atomic_path(path) as tmp:
        sequences.save(tmp)
    return sequences


def _cache_path(dataset: str, split: str, files: list[Path], tokenizer: tiktoken.Encoding, text_form: str) -> Path:
    sources = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    vocabulary = (tokenizer.name, tokenizer.n_vocab, tokenizer.encode(PROBE, allowed_special="all"))
    key = hashlib.sha256(repr((FORMAT, dataset, split, text_form, sources, vocabulary)).encode()).hexdigest()[:16]
    folder = Path(os.path.commonpath([f.parent for f in files]))
    if not _writable(folder):
        folder = cache_dir("data", dataset)
    return folder / f"{dataset}-{split}-tokens-{key}.npz"


def _writable(folder: Path) -> bool:
    # os.access answers yes to root everywhere but on read-only mounts; a folder without write bits is read-only
    # by intent (like a shared data copy), so root leaves it alone too.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
