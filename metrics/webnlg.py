"""BLEU, METEOR and TER as the WebNLG 2017 challenge's evaluation scores them.

The Prefix-Tuning authors scored WebNLG with the challenge's scripts (webnlg-automatic-evaluation, which the DART
repository's run_eval_on_webnlg.sh runs). What those scripts do, kept here:
- every text is cut at each non-word character (Python's re.split(r"(\\W)")), lowercased and folded to ASCII by
  unidecode; a reference is cut before it is folded, a hypothesis after;
- each table keeps its first three references. BLEU and METEOR read them as three parallel files, so a table
  with fewer has empty references, which count (BLEU's closest reference length can be an empty one's 0); TER
  reads only the references there are;
- BLEU is Moses' multi-bleu.perl -lc, METEOR is meteor-1.5.jar -l en -norm -r 3, TER is tercom 0.7.25.
"""
import math
import re
import unicodedata
from collections.abc import Sequence

from metrics.coco import meteor
from metrics.inputs import check_inputs
from metrics.mteval import clipped_matches
from metrics.ter import ter

REFERENCES = 3
# unidecode's ASCII for the characters that Unicode decomposition leaves alone: every such character of the
# WebNLG 2017 files, of Latin-1 and Latin Extended-A, and the usual dashes and quotes (tests compare them all)
_ASCII = str.maketrans({
    "¡": "!", "¢": "C/", "£": "PS", "¤": "$?", "¥": "Y=", "¦": "|", "§": "SS", "¨": '"', "©": "(c)",
    "«": "<<", "¬": "!", "®": "(r)", "¯": "-", "°": "deg", "±": "+-", "´": "'", "µ": "u", "¶": "P", "·": "*",
    "¸": ",", "»": ">>", "¼": " 1/4", "½": " 1/2", "¾": " 3/4", "¿": "?", "×": "x", "÷": "/", "Æ": "AE",
    "æ": "ae", "Ð": "D", "ð": "d", "Ø": "O", "ø": "o", "Þ": "Th", "þ": "th", "ß": "ss", "Đ": "D", "đ": "d",
    "Ħ": "H", "ħ": "h", "ı": "i", "ĸ": "k", "Ŀ": "L", "ŀ": "l", "Ł": "L", "ł": "l", "ŉ": "'n", "Ŋ": "NG",
    "ŋ": "ng", "Œ": "OE", "œ": "oe", "Ŧ": "T", "ŧ": "t", "Ə": "@", "ə": "@", "‐": "-", "‑": "-", "‒": "-",
    "–": "-", "—": "--", "―": "--", "‖": "||", "‗": "_", "‘": "'", "’": "'", "‚": ",", "‛": "'", "“": '"',
    "”": '"', "„": ",,", "‟": '"', "†": "+", "‡": "++", "•": "*", "…": "...", "′": "'", "″": "''", "‹": "<",
    "›": ">", "€": "EUR"})


def ascii_fold(text: str) -> str:
    """unidecode's transliteration for Latin text: accents dropped, ligatures and symbols spelled out. Characters
    it would transliterate from other scripts (Greek, Cyrillic, CJK, ...) are dropped instead."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII)).translate(_ASCII)
    return "".join(c for c in decomposed if c.isascii())


def split_at_non_words(text: str) -> str:
    """Each non-word character a token of its own (re.split(r"(\\W)")), whitespace collapsed: `Five-O's` ->
    `Five - O ' s`."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def reference_text(text: str) -> str:
    """A reference as the challenge's reference files hold it."""
    return ascii_fold(split_at_non_words(text).lower())


def hypothesis_text(text: str) -> str:
    """A generated text as the challenge's scripts rewrite a submission line."""
    return split_at_non_words(ascii_fold(ascii_fold(text.strip()).lower()))


def webnlg_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                  meteor_too: bool = True) -> dict[str, float]:
    """{"BLEU" (0-100), "METEOR" (0-1, needs pycocoevalcap and Java), "TER" (0-1)} of raw texts, one hypothesis
    per table with all of that table's references, on the paper's scales (BLEU 55.1, METEOR .41, TER .41)."""
    check_inputs(hypotheses, references)
    hyps = [hypothesis_text(h) for h in hypotheses]
    refs = [[reference_text(r) for r in group[:REFERENCES]] for group in references]
    padded = [group + [""] * (REFERENCES - len(group)) for group in refs]
    scores = {"METEOR": meteor(hyps, padded)} if meteor_too else {}  # first: it is the one that can be missing
    return scores | {"BLEU": multi_bleu(hyps, padded), "TER": ter(hyps, refs)}


def format_webnlg(scores: dict[str, dict[str, float]]) -> str:
    """A table of the paper's WebNLG columns (BLEU, METEOR, TER), one row per category subset; '-' where a
    metric is missing."""
    return format_rows(scores, {"BLEU": ("BLEU", 1), "METEOR": ("METEOR", 2), "TER": ("TER", 2)})


def format_rows(rows: dict[str, dict[str, float]], columns: dict[str, tuple[str, int]]) -> str:
    """A line of column headers, then one line per row: its name, then each metric (columns: metric -> (header,
    decimals)) right-aligned, '-' where the row lacks it."""
    label = max(map(len, rows), default=0)
    widths = {metric: max(7, len(header) + 2) for metric, (header, _) in columns.items()}
    lines = [" " * label + "".join(f"{header:>{widths[metric]}}" for metric, (header, _) in columns.items())]
    for name, values in rows.items():
        cells = [f"{values[metric]:>{widths[metric]}.{decimals}f}" if metric in values else f"{'-':>{widths[metric]}}"
                 for metric, (_, decimals) in columns.items()]
        lines.append(f"{name:{label}}" + "".join(cells))
    return "\n".join(lines)


def multi_bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU of whitespace-separated tokens as Moses' multi-bleu.perl computes it, on a 0-100 scale.

    BLEU = BP * exp(mean over n = 1..4 of log p_n), p_n the clipped n-gram matches over the hypotheses' n-grams
    (an order with no match gives 0); BP = exp(1 - r/c) when c < r, with c the hypotheses' length and r the sum
    of each one's closest reference length (the shorter on a tie). Empty references take part.
    """
    hyps = [h.split() for h in hypotheses]
    refs = [[r.split() for r in group] for group in references]
    c = sum(map(len, hyps))
    r = sum(min((len(ref) for ref in group), key=lambda length: (abs(length - len(hyp)), length))
            for hyp, group in zip(hyps, refs, strict=True))
    precisions = []
    for n in range(1, 5):
        matches = sum(clipped_matches(hyp, group, n).total() for hyp, group in zip(hyps, refs))
        candidates = sum(max(len(hyp) - n + 1, 0) for hyp in hyps)
        precisions.append(matches / candidates if candidates else 0.0)
    if min(precisions) == 0:
        return 0.0
    brevity = 1.0 if c >= r else math.exp(1 - r / c)
    return 100 * brevity * math.exp(sum(map(math.log, precisions)) / 4)
