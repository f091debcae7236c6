"""The token layout the paper trains on, ` {table} <|endoftext|> {text} <|endoftext|>` with the loss on the
text and its final <|endoftext|>, and a compact store of such sequences that hands out padded batches."""
from dataclasses import dataclass
from itertools import chain

import numpy as np
import tiktoken
import torch

from common.errors import UserError

IGNORE_INDEX = -100  # cross_entropy's default ignore_index: targets that carry no loss


def prompt_ids(tokenizer: tiktoken.Encoding, table: str) -> list[int]:
    """The decoding prompt ` {table} <|endoftext|>`: the training sequence up to and including its first EOT."""
    return _segment(tokenizer, table)


def _segment(tokenizer: tiktoken.Encoding, part: str) -> list[int]:
    # Encoding the pieces between special tokens separately and splicing in the EOT id is exactly what
    # tokenizer.encode(..., allowed_special={"<|endoftext|>"}) does with the whole string.
    return tokenizer.encode_ordinary(f" {part} ") + [tokenizer.eot_token]


@dataclass(frozen=True)
class Sequences:
    """Token sequences end to end: sequence i is tokens[offsets[i]:offsets[i + 1]], and its loss covers the
    tokens from loss_starts[i] (the first text token) on."""
    tokens: np.ndarray       # int32
    offsets: np.ndarray      # int64, one more than there are sequences
    loss_starts: np.ndarray  # int64, index within each sequence
    eot: int                 # pads idx in batches
    skipped: int = 0         # rows left out because they do not fit the model (see data/positions.py)

    @classmethod
    def from_pairs(cls, tokenizer: tiktoken.Encoding, pairs: list[tuple[str, str]]) -> "Sequences":
        """One sequence per (table, text) pair."""
        prompts = [prompt_ids(tokenizer, table) for table, _ in pairs]
        sequences = [prompt + _segment(tokenizer, text) for prompt, (_, text) in zip(prompts, pairs)]
        return cls(tokens=np.fromiter(chain.from_iterable(sequences), np.int32),
                   offsets=np.cumsum([0, *map(len, sequences)], dtype=np.int64),
                   loss_starts=np.array([len(p) for p in prompts], np.int64),
                   eot=tokenizer.eot_token)

    def __len__(self) -> int:
        return len(self.loss_starts)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i]:self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def longest(self) -> int:
        """Tokens in the longest sequence."""
        return int(self.lengths.max())

    def describe(self) -> str:
        n = self.lengths
        skipped = f"; {self.skipped:,} longer ones left out (--skip_long_rows)" if self.skipped else ""
        return (f"{len(self):,} sequences (one per table-text pair) of {n.min()}/{n.mean():.1f}/{n.max()} tokens "
                f"(min/mean/max){skipped}")

    def target_count(self, indices) -> int:
        """How many targets batch(indices) holds: every token of a row's text (its final EOT included)."""
        rows = np.asarray(indices, dtype=np.int64)
        return int((self.lengths[rows] - self.loss_starts[rows]).sum())

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx, targets) of shape (B, T) for next-token prediction, right-padded to the longest row: idx with EOT,
        targets with IGNORE_INDEX, which also covers every target before the first text token."""
        indices = [int(i) for i in indices]  # a list, array or tensor
        rows = [torch.from_numpy(self[i].astype(np.int64)) for i in indices]
        width = max(len(row) for row in rows) - 1
        idx = torch.full((len(rows), width), self.eot, dtype=torch.long)
        targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for b, (i, row) in enumerate(zip(indices, rows)):
            start = int(self.loss_starts[i])
            idx[b, :len(row) - 1] = row[:-1]
            targets[b, start - 1:len(row) - 1] = row[start:]  # position t predicts token t + 1
        return idx, targets

    def random_subset(self, n: int, seed: int) -> "Sequences":
        """n of the sequences, drawn without replacement from the seed and kept in their order: a low-data
        training set (the paper's §6.3), the same on every machine for the same seed."""
        drawn = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return self.select(sorted(drawn.tolist()))

    def select(self, rows, skipped: int = 0) -> "Sequences":
        """The given rows, in the given order; `skipped` counts the rows left out for not fitting the model."""
        rows = [int(i) for i in rows]
        parts = [self[i] for i in rows]
        return Sequences(tokens=np.concatenate(parts), offsets=np.cumsum([0, *map(len, parts)], dtype=np.int64),
                         loss_starts=self.loss_starts[rows].copy(), eot=self.eot, skipped=self.skipped + skipped)

    def save(self, path) -> None:
        with open(path, "wb") as f:  # a file object, so numpy does not append ".npz" to a temporary name
            np.savez(f, tokens=self.tokens, offsets=self.offsets, loss_starts=self.loss_starts, eot=self.eot)

    @classmethod
    def load(cls, path) -> "Sequences":
        """Sequences saved by save(), checked to be what save() writes: a damaged or foreign file is a UserError."""
        layout = {"tokens": (np.int32, 1), "offsets": (np.int64, 1), "loss_starts": (np.int64, 1), "eot": (None, 0)}
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {name: f[name] for name in f.files} if sorted(f.files) == sorted(layout) else None
        except Exception as e:  # zipfile, zlib and numpy raise a zoo of types for a damaged file
            raise UserError(f"{path} could not be read as saved sequences ({type(e).__name__})") from None
        if arrays is None or any(a.ndim != ndim or (dtype and a.dtype != dtype) or a.dtype.kind not in "iu"
                                 for a, (dtype, ndim) in zip(map(arrays.get, layout), layout.values())):
            raise UserError(f"{path} is not a file of saved sequences (tokens, offsets, loss_starts and eot)")
        tokens, offsets, starts = arrays["tokens"], arrays["offsets"], arrays["loss_starts"]
        lengths = np.diff(offsets)
        # sequence i is tokens[offsets[i]:offsets[i + 1]]; its loss starts inside it, after at least one token
        if not (len(offsets) == len(starts) + 1 and offsets[0] == 0 and offsets[-1] == len(tokens)
                and (lengths >= 0).all() and (starts >= 1).all() and (starts < lengths).all()
                and (tokens >= 0).all()):
            raise UserError(f"{path} is damaged: its offsets and loss starts do not fit its tokens")
        return cls(tokens, offsets, starts, int(arrays["eot"]))
