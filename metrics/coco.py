"""METEOR, ROUGE-L and CIDEr through the MS-COCO caption scorers, fed as the E2E challenge script feeds them.

measure_scores.py hands every hypothesis and reference to the Stanford PTB tokenizer (which lowercases and
whose wrapper drops punctuation tokens), then scores the tokenized text with METEOR 1.5 (`-l en -norm`),
ROUGE-L (F-measure with beta = 1.2 of the best LCS precision and best LCS recall over the references, averaged
over hypotheses) and CIDEr-D (n-grams up to 4, sigma = 6, document frequencies from the references, x10).
The package pycocoevalcap ships the jars for the tokenizer and METEOR, so all three metrics need Java.
"""
import functools
import shutil
from collections.abc import Sequence

from common.errors import UserError
from common.progress import Progress
from metrics.inputs import check_inputs

INSTALL_HINT = ("run `pip install pycocoevalcap` and install a Java runtime (e.g. `apt install default-jre`), "
                "or score BLEU and NIST only with sample.py --no-coco (coco=False in Python)")


def coco_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"METEOR", "ROUGE-L", "CIDEr"}: METEOR and ROUGE-L on a 0-100 scale, CIDEr as is (the paper's 2.46)."""
    check_inputs(hypotheses, references)
    Cider, Meteor, Rouge, PTBTokenizer = _scorers("METEOR, ROUGE-L and CIDEr need")

    # The scorers take {id: [caption, ...]}; the tokenizer takes {id: [{"caption": text}, ...]}.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": ref} for ref in group] for i, group in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": hypothesis}] for i, hypothesis in enumerate(hypotheses)})
    meteor_score = _meteor_score(Meteor, gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"METEOR": 100 * float(meteor_score), "ROUGE-L": 100 * float(rouge), "CIDEr": float(cider)}


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """METEOR 1.5 (-l en -norm) of the texts as given, with no tokenizer before it, as a fraction (0.41): the
    jar's own corpus score. An empty reference is passed on as one (the WebNLG scripts rely on it)."""
    check_inputs(hypotheses, references)
    _, Meteor, _, _ = _scorers("METEOR needs")
    return _meteor_score(Meteor, {i: list(group) for i, group in enumerate(references)},
                         {i: [hypothesis] for i, hypothesis in enumerate(hypotheses)})


def _scorers(what_needs: str):
    """pycocoevalcap's Cider, Meteor, Rouge and PTBTokenizer, or a UserError saying what is missing."""
    try:
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        raise UserError(f"{what_needs} the pycocoevalcap package; {INSTALL_HINT}") from None
    if shutil.which("java") is None:
        raise UserError(f"{what_needs} Java, but `java` is not on PATH; {INSTALL_HINT}")
    return Cider, Meteor, Rouge, PTBTokenizer


def _meteor_score(meteor_class, gts, res) -> float:
    """The jar's corpus METEOR of {id: [hypothesis]} against {id: [reference, ...]}, with progress: the jar scores
    one text per round trip, and a split has thousands."""
    server = _meteor(meteor_class)
    with Progress("METEOR", len(res), "texts") as server.progress:
        return float(server.compute_score(gts, res)[0])


@functools.lru_cache(maxsize=1)
def _meteor(meteor_class):
    """One METEOR server (a Java process) for every call: starting one takes seconds. Its `progress` advances at
    each text the jar scores (pycocoevalcap's `_stat`, one round trip per text)."""
    class ReportingMeteor(meteor_class):
        progress: Progress

        def _stat(self, hypothesis, references):
            stat = super()._stat(hypothesis, references)
            self.progress.advance()
            return stat

    return ReportingMeteor()
