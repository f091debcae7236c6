"""Corpus BLEU and NIST exactly as the E2E NLG Challenge scores them.

The challenge script (github.com/tuetschek/e2e-metrics, measure_scores.py) run with `-p`, as the Prefix-Tuning
authors ran it, uses its Python port of NIST's mteval-v13a.pl (metrics/pymteval.py). Its behaviour, kept here:
- mteval-v13a tokenization, then lowercasing (matching is case-insensitive by default);
- n-gram counts clipped by their largest count in any one reference of the hypothesis;
- a hypothesis of L tokens counts L - n + 1 candidate n-grams, even where that is zero or negative (so a
  hypothesis shorter than n - 1 tokens shrinks the corpus's n-gram denominator);
- an empty text is one empty token, so an empty hypothesis has length 1 and matches nothing.
"""
import math
import re
from collections import Counter
from collections.abc import Sequence

from metrics.inputs import check_inputs

BLEU_ORDER = 4
NIST_ORDER = 5

# mteval-v13a's tokenizer: undo SGML escapes, then cut punctuation off words. Periods and commas stay inside
# numbers ("3.5", "1,000"), and a dash is cut only after a digit ("20-25" -> "20 - 25", "family-friendly" stays).
_UNESCAPE = [("<skipped>", ""), ("-\n", ""), ("\n", " "),
             ("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")]
_SPLIT = [(re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # ASCII symbols except ' - . ,
          (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
          (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
          (re.compile(r"([0-9])(-)"), r"\1 \2 "),
          (re.compile(r"\s+"), " ")]


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split `text` into tokens as mteval-v13a does (its "basic", not "international", tokenization)."""
    for escaped, plain in _UNESCAPE:
        text = text.replace(escaped, plain)
    text = f" {text} "
    for pattern, replacement in _SPLIT:
        text = pattern.sub(replacement, text)
    tokens = text.strip().split(" ")  # "" -> [""]: the official script's empty token
    return [token.lower() for token in tokens] if lowercase else tokens


def ngrams(tokens: list[str], n: int) -> Counter:
    """How often each n-gram (a tuple of n tokens) occurs in `tokens`."""
    return Counter(zip(*(tokens[i:] for i in range(n))))


def clipped_matches(hypothesis: list[str], references: list[list[str]], n: int) -> Counter:
    """The hypothesis's n-grams, each counted at most as often as it occurs in any single reference."""
    most_in_one_reference = Counter()
    for reference in references:
        most_in_one_reference |= ngrams(reference, n)  # | keeps the larger count
    return ngrams(hypothesis, n) & most_in_one_reference  # & keeps the smaller count


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], lowercase: bool = True) -> float:
    """Corpus BLEU (Papineni et al., 2002) on a 0-100 scale (the official script prints the fraction, 0.703).

    BLEU = BP * exp(mean over n = 1..4 of log p_n), where p_n is the clipped n-gram matches over the candidate
    n-grams of the whole corpus, and BP = exp(1 - r/c) when c <= r, else 1, with c the hypotheses' total
    length and r the sum, over hypotheses, of the length of the reference closest in length (the shorter one
    on a tie). Matches are floored at 1e-15 and candidates at 1e-9, so an order without matches leaves BLEU
    tiny rather than undefined.
    """
    hyps, refs = _tokenized(hypotheses, references, lowercase)
    log_precision = 0.0
    for n in range(1, BLEU_ORDER + 1):
        matches = sum(clipped_matches(hyp, group, n).total() for hyp, group in zip(hyps, refs))
        candidates = sum(len(hyp) - n + 1 for hyp in hyps)
        log_precision += math.log(max(matches, 1e-15) / max(candidates, 1e-9)) / BLEU_ORDER

    c = sum(map(len, hyps))
    r = sum(min((len(ref) for ref in group), key=lambda length: (abs(length - len(hyp)), length))
            for hyp, group in zip(hyps, refs))
    return 100 * (1.0 if c > r else math.exp(1 - r / c)) * math.exp(log_precision)


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]], lowercase: bool = True) -> float:
    """Corpus NIST (Doddington, 2002), n-grams up to 5.

    NIST = BP * sum over n = 1..5 of (sum of Info(g) over clipped matches g) / (candidate n-grams), with
    Info(w_1..w_n) = log2(count(w_1..w_n-1) / count(w_1..w_n)) counted over every reference of the corpus
    (count of the empty prefix = all reference words). BP = exp(-beta * ln(c / r)^2) when c < r, else 1, where
    c is the hypotheses' total length, r the sum of each hypothesis's average reference length, and
    beta = -ln(0.5) / ln(1.5)^2 so that c/r = 2/3 gives BP = 1/2.
    """
    hyps, refs = _tokenized(hypotheses, references, lowercase)
    counts = Counter()  # every reference n-gram of the corpus, n = 0..5, for the information weights
    for ref in (ref for group in refs for ref in group):
        counts[()] += len(ref)
        for n in range(1, NIST_ORDER + 1):
            counts.update(ngrams(ref, n))

    score = 0.0
    for n in range(1, NIST_ORDER + 1):
        information = sum(count * math.log2(counts[gram[:-1]] / counts[gram])
                          for hyp, group in zip(hyps, refs)
                          for gram, count in clipped_matches(hyp, group, n).items())
        candidates = sum(len(hyp) - n + 1 for hyp in hyps)
        if candidates:  # zero only for a corpus of very short hypotheses; the official script divides by zero
            score += information / candidates

    c = sum(map(len, hyps))
    r = sum(sum(map(len, group)) / len(group) for group in refs)
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return score * (1.0 if c >= r else math.exp(-beta * math.log(c / r) ** 2))


def _tokenized(hypotheses, references, lowercase: bool) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Check the inputs' shape, then tokenize every hypothesis and every reference."""
    check_inputs(hypotheses, references)
    return ([tokenize(h, lowercase) for h in hypotheses],
            [[tokenize(ref, lowercase) for ref in group] for group in references])
