"""One table and the texts written for it: the unit every dataset loader returns."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    table: str                   # the linearized input, e.g. "name : Aromi | Type : pub"
    references: tuple[str, ...]  # every human text for this table, in file order
    category: str | None = None  # WebNLG's DBpedia category; None elsewhere
    # where each reference sits in its file ("line 3 of train.jsonl"), for messages about one training row;
    # not part of what the example is, so equal tables with equal texts stay equal wherever they were read
    places: tuple[str, ...] = field(default=(), compare=False)
