"""One table and the texts written for it: the unit every dataset loader returns."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    table: str                   # the linearized input, e.g. "name : Aromi | Type : pub"
    references: tuple[str, ...]  # every human text for this table, in file order
    category: str | None = None  # WebNLG's DBpedia category; None for E2E
