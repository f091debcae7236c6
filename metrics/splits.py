"""Each data set's scoring protocol, as the paper reports it (Table 2): which metrics score a split, the paper's
table of them, and which of the paper's metrics are never computed here."""
from collections.abc import Callable
from typing import NamedTuple

from common import UserError
from data import category_subset
from metrics.dart import NOT_COMPUTED, dart_scores, format_dart
from metrics.e2e import e2e_scores, format_scores
from metrics.webnlg import format_webnlg, webnlg_scores


def _e2e(examples, texts: list[str], coco: bool) -> dict:
    return e2e_scores(texts, [ex.references for ex in examples], coco)


def _webnlg(examples, texts: list[str], meteor_too: bool) -> dict:
    text_of = dict(zip(examples, texts))  # equal examples (same table and references) decode alike
    groups = {subset: chosen for subset in ("seen", "unseen", "all") if (chosen := category_subset(examples, subset))}
    return {subset: webnlg_scores([text_of[ex] for ex in chosen], [ex.references for ex in chosen], meteor_too)
            for subset, chosen in groups.items()}


def _dart(examples, texts: list[str], meteor_too: bool) -> dict:
    # generate_input_dart.py writes no reference line for an entry without text, so its hypothesis is not scored
    scored = [(ex, text) for ex, text in zip(examples, texts) if any(ex.references)]
    return dart_scores([text for _, text in scored], [ex.references for ex, _ in scored], meteor_too)


class Scoring(NamedTuple):
    """How a data set's split is scored."""
    scores: Callable[[list, list[str], bool], dict]  # of (examples, texts, with the metrics that need Java or not)
    table: Callable[[dict], str]                     # the paper's table of those scores
    not_computed: str | None = None                  # the paper's metrics never computed here, and why


SCORING = {"webnlg": Scoring(_webnlg, format_webnlg), "dart": Scoring(_dart, format_dart, NOT_COMPUTED)}
E2E_SCORING = Scoring(_e2e, format_scores)  # E2E's five metrics, for every dataset not in SCORING (E2E, JSONL)


def score_split(dataset: str, examples, texts: list[str], coco: bool) -> tuple[dict, str | None]:
    """The paper's metrics (Table 2): E2E's five; WebNLG's BLEU, METEOR and TER on seen, unseen and all
    categories as the WebNLG challenge's scripts compute them, keyed by category; DART's BLEU, METEOR and TER as
    the DART repository's scripts compute them; and why some are missing (None when none is)."""
    scoring = SCORING.get(dataset, E2E_SCORING)
    try:
        scores, missing = scoring.scores(examples, texts, coco), None
    except UserError as e:  # METEOR (and E2E's ROUGE-L and CIDEr) is an optional extra
        scores, missing = scoring.scores(examples, texts, False), str(e)
    return scores, "; ".join(reason for reason in (scoring.not_computed, missing) if reason) or None


def scores_table(dataset: str, scores: dict, missing: str | None) -> str:
    """The paper's table of a split's scores, and a line saying which are missing and why."""
    return SCORING.get(dataset, E2E_SCORING).table(scores) + (f"\n({missing})" if missing else "")
