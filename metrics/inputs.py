"""The one shape every metric takes: one hypothesis per table, and all of that table's references."""
from collections.abc import Sequence

from common.errors import UserError


def check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    """Raise a UserError unless `hypotheses[i]` is a string and `references[i]` a non-empty list of strings."""
    if isinstance(hypotheses, str) or not all(isinstance(h, str) for h in hypotheses):
        raise UserError("hypotheses must be a list of strings, one generated text per table")
    if isinstance(references, str) or any(isinstance(group, str) for group in references):
        raise UserError("references must be a list of lists of strings (all references of each table), "
                        "not a list of strings")
    if len(hypotheses) != len(references):
        raise UserError(f"got {len(hypotheses)} hypotheses but {len(references)} reference groups; "
                        "pass exactly one hypothesis per table")
    if not hypotheses:
        raise UserError("there is nothing to score: pass at least one hypothesis and its references")
    if empty := [i for i, group in enumerate(references) if not group]:
        raise UserError(f"table {empty[0]} has no references; every hypothesis needs at least one")
