"""The E2E challenge's five metrics: BLEU and NIST as its official scorer computes them, METEOR, ROUGE-L and CIDEr
as its MS-COCO scorers do."""
from collections.abc import Sequence

from metrics.coco import coco_scores
from metrics.mteval import bleu, nist

DECIMALS = {"BLEU": 1, "NIST": 2, "METEOR": 1, "ROUGE-L": 1, "CIDEr": 2}  # the paper's columns, as it prints them


def e2e_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], coco: bool = True) -> dict[str, float]:
    """BLEU, NIST and (unless coco=False, which needs neither pycocoevalcap nor Java) METEOR, ROUGE-L, CIDEr."""
    extra = coco_scores(hypotheses, references) if coco else {}  # first: it is the part that can be missing
    return {"BLEU": bleu(hypotheses, references), "NIST": nist(hypotheses, references)} | extra


def format_scores(scores: dict[str, float]) -> str:
    """A header line and a value line in the paper's column order; a metric missing from `scores` shows '-'."""
    header = "  ".join(f"{name:>7}" for name in DECIMALS)
    values = "  ".join(f"{scores[name]:>7.{decimals}f}" if name in scores else f"{'-':>7}"
                       for name, decimals in DECIMALS.items())
    return f"{header}\n{values}"
