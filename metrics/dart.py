"""BLEU, METEOR and TER as the DART repository's evaluation scores them, the paper's "official evaluation script"
for DART (Yale-LILY/dart: evaluation/run_eval_on_dart.sh and prepare_files.py, on the reference files that
data/v1.1.1/generate_input_dart.py writes from the test XML).

It is the WebNLG challenge's pipeline (metrics/webnlg.py) but for these differences:
- references: an entry's first three <lex> texts that are not empty (generate_input_dart.py skips a <lex> with
  no text), newlines inside a text dropped, cut at each non-word character and lowercased, but not folded to
  ASCII (`Piñero` -> `piñero`); missing ones are empty, and take part in BLEU as WebNLG's do;
- hypotheses: the script reads them as given. The authors lowercased theirs first (`tolower.py`, whose code is
  not public; PrefixTuning issue #12), and a text can only match the reference files, cut at non-word
  characters, once it is cut the same way (the repository's example output is), so hypotheses get the
  references' rewriting;
- BLEU: multi-bleu.perl over references 0, 1 and 2, without -lc (the texts are lowercase already);
- METEOR: meteor-1.5 `-l en -norm -r 8` against reference 0 alone, followed by 7 empty references, as
  prepare_files.py writes its file (it reads only the first reference file). The jar keeps the first of equally
  good references, so the empty ones change nothing; they are passed as the script passes them;
- TER: tercom 0.7.25 against reference 0 alone (WebNLG's reads all three);
- MoverScore, BERTScore and BLEURT, which the script also runs, are not computed (NOT_COMPUTED).
"""
from collections.abc import Sequence

from common.errors import UserError
from metrics.coco import meteor
from metrics.inputs import check_inputs
from metrics.ter import ter
from metrics.webnlg import REFERENCES, format_rows, multi_bleu, split_at_non_words

METEOR_REFERENCES = 8  # prepare_files.py's "8 max references", all but the first empty
NOT_COMPUTED = ("MoverScore, BERTScore and BLEURT are not computed: they need neural models (BERT, RoBERTa-large, "
                "a BLEURT checkpoint) that cannot be had here")
COLUMNS = {"BLEU": ("BLEU", 1), "METEOR": ("MET", 2), "TER": ("TER", 2), "MoverScore": ("Mover", 2),
           "BERTScore": ("BERT", 2), "BLEURT": ("BLEURT", 2)}  # the paper's Table 2, right


def dart_text(text: str) -> str:
    """A text as the DART reference files hold it: `McDonald's Five-O` -> `mcdonald ' s five - o`."""
    return split_at_non_words(text.replace("\n", "")).lower()


def reference_lines(texts: Sequence[str]) -> list[str]:
    """An entry's lines of the three reference files: its first three non-empty texts, then empty ones."""
    kept = [dart_text(text) for text in texts if text][:REFERENCES]
    return kept + [""] * (REFERENCES - len(kept))


def dart_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                meteor_too: bool = True) -> dict[str, float]:
    """{"BLEU" (0-100), "METEOR" (0-1, needs pycocoevalcap and Java), "TER" (0-1)} of raw texts, one hypothesis
    per entry with all of that entry's texts, on the paper's scales (BLEU 46.4, METEOR .38, TER .46)."""
    check_inputs(hypotheses, references)
    if blank := [i for i, group in enumerate(references) if not any(group)]:
        raise UserError(f"table {blank[0]} has only empty references; every hypothesis needs a text to match")
    hyps = [dart_text(h) for h in hypotheses]
    refs = [reference_lines(group) for group in references]
    first = [[group[0]] for group in refs]
    scores = {"METEOR": meteor(hyps, [ref + [""] * (METEOR_REFERENCES - 1) for ref in first])} if meteor_too else {}
    return scores | {"BLEU": multi_bleu(hyps, refs), "TER": ter(hyps, first)}  # METEOR first: it can be missing


def format_dart(scores: dict[str, float]) -> str:
    """A table of the paper's DART columns (BLEU, MET, TER, Mover, BERT, BLEURT); '-' where a metric is
    missing, as MoverScore, BERTScore and BLEURT always are."""
    return format_rows({"": scores}, COLUMNS)
