"""The files the official E2E scorer (e2e-metrics' measure_scores.py) reads, so that its numbers can be checked:
hypotheses one per line, in the order of the tables; references one per line, each table's group followed by a
blank line."""
from collections.abc import Sequence
from pathlib import Path

from common.errors import UserError


def one_line(text: str) -> str:
    """A text as the single line these files give it: its line breaks become spaces."""
    return " ".join(text.splitlines())


def hypotheses_text(hypotheses: Sequence[str]) -> str:
    return "".join(one_line(text) + "\n" for text in hypotheses)


def references_text(references: Sequence[Sequence[str]]) -> str:
    # a blank reference would end its group early, so none is written
    return "".join("".join(one_line(ref) + "\n" for ref in group if ref.strip()) + "\n" for group in references)


def read_hypotheses(path, count: int) -> list[str]:
    """Line i of `path` is the text for table i; there must be one line per table (a blank line is an empty text)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"could not read the texts in {path} ({type(e).__name__})") from None
    if len(lines) != count:
        raise UserError(f"{path} holds {len(lines)} lines, but there are {count} tables: one text per table is "
                        f"expected, in the order of the split")
    return lines
