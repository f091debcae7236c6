"""Translation Edit Rate as tercom 0.7.25 computes it (Snover et al., 2006), on whitespace-separated tokens.

TER = (word insertions + deletions + substitutions + block shifts) / reference words. tercom finds the shifts
greedily: while some move of a block of hypothesis words lowers the edit distance, it applies the move that lowers
it most. Its search limits, kept here (as sacrebleu's port keeps them, which the tests compare against):
- a block is at most 10 words, it matches the reference at the place it moves to, and it starts at most 50 words
  from there; a block that already matches where it is, or whose target already matches, is not moved;
- ties go to the longer block, then the earlier one, then the earlier target;
- the edit distance is computed in a band of 25 reference words either side of the diagonal, so it can exceed
  the true Levenshtein distance on very different lengths;
- at most 1,000 candidate moves are scored per hypothesis (sacrebleu's bound; on the WebNLG texts of the check in
  docs/reproduction.md the result equals tercom's own to every digit).
With several references a hypothesis is charged its fewest edits among them and the average of their lengths.
"""
import functools
import math
from collections.abc import Sequence

from common.progress import Progress

MAX_BLOCK = 10       # words in one shifted block
MAX_DISTANCE = 50    # between a block's start in the hypothesis and in the reference
BEAM = 25            # reference words either side of the diagonal in the edit-distance table
MAX_CANDIDATES = 1000

# One step of an alignment, read left to right: both sequences advance (MATCH or SUBSTITUTE), or only the
# hypothesis (an extra hypothesis word) or only the reference (a missing reference word).
MATCH, SUBSTITUTE, HYP_ONLY, REF_ONLY = "=", "s", "h", "r"


def ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus TER as a fraction (tercom's "Total TER"): all edits over the sum of the average reference lengths.
    Texts are compared as given, split on whitespace (tercom's default is case-insensitive; lowercase first)."""
    edits = lengths = 0.0
    with Progress("TER", len(hypotheses), "texts") as progress:
        for hypothesis, group in zip(hypotheses, references, strict=True):
            e, n = _segment_ter(tuple(hypothesis.split()), tuple(tuple(ref.split()) for ref in group))
            edits, lengths = edits + e, lengths + n
            progress.advance()
    return edits / lengths if lengths else float(edits > 0)  # no reference words at all: wrong unless empty too


@functools.lru_cache(maxsize=1 << 16)  # a table is scored for "seen" or "unseen", then again for "all"
def _segment_ter(hypothesis: tuple[str, ...], references: tuple[tuple[str, ...], ...]) -> tuple[int, float]:
    """(fewest edits over the references, their average length) for one hypothesis."""
    return (min(_edits(hypothesis, ref) for ref in references),
            sum(map(len, references)) / len(references))


def _edits(hypothesis: tuple[str, ...], reference: tuple[str, ...]) -> int:
    """Shifts plus the edit distance that remains after them."""
    if not reference:
        return len(hypothesis)
    distance = _BandedDistance(reference, len(hypothesis))
    shifts, checked = 0, 0
    while True:
        gain, shifted, checked = _best_shift(hypothesis, reference, distance, checked)
        if checked >= MAX_CANDIDATES or gain <= 0:
            return shifts + distance(hypothesis)[0]
        shifts, hypothesis = shifts + 1, shifted


def _best_shift(words, reference, distance, checked: int):
    """(gain, shifted words, candidates checked so far) of the move that lowers the edit distance most."""
    cost, steps = distance(words)
    aligned, hyp_wrong, ref_wrong = _alignment(steps)
    best = (0, 0, 0, 0)  # gain, block length, -block start, -target: tercom's order of preference
    best_words = words
    for start, ref_start, length in _common_blocks(words, reference):
        if not any(hyp_wrong[start:start + length]) or not any(ref_wrong[ref_start:ref_start + length]):
            continue  # the block is already right where it is, or the place it would go is already right
        if start <= aligned[ref_start] < start + length:
            continue  # the target lies inside the block itself
        previous = None
        for r in range(ref_start - 1, ref_start + length):  # just after the hypothesis word aligned to r
            target = 0 if r < 0 else aligned[r] + 1
            if target == previous:
                continue
            previous = target
            moved = _move(words, start, length, target)
            checked += 1
            rank = (cost - distance(moved)[0], length, -start, -target)
            if rank > best:
                best, best_words = rank, moved
        if checked >= MAX_CANDIDATES:
            break
    return best[0], best_words, checked


def _common_blocks(words, reference):
    """(start in words, start in reference, length) of every common run of 1-10 words, shortest first."""
    for i in range(len(words)):
        for j in range(max(0, i - MAX_DISTANCE), min(len(reference), i + MAX_DISTANCE + 1)):
            length = 0
            while (length < MAX_BLOCK and i + length < len(words) and j + length < len(reference)
                   and words[i + length] == reference[j + length]):
                length += 1
                yield i, j, length


def _move(words: tuple, start: int, length: int, target: int) -> tuple:
    """words with words[start:start + length] moved before words[target]. A target inside the block or just
    after it counts in the words that remain once the block is taken out, as in tercom's port."""
    block, rest = words[start:start + length], words[:start] + words[start + length:]
    at = target - length if target > start + length else target
    return rest[:at] + block + rest[at:]


def _alignment(steps: str) -> tuple[list[int], list[bool], list[bool]]:
    """For each reference word, the index of the hypothesis word aligned to it (or, if it is missing, of the last
    hypothesis word before it; -1 at the start); and which hypothesis and which reference words are not matched."""
    aligned, hyp_wrong, ref_wrong = [], [], []
    h = -1
    for step in steps:
        if step != REF_ONLY:
            h += 1
            hyp_wrong.append(step != MATCH)
        if step != HYP_ONLY:
            aligned.append(h)
            ref_wrong.append(step != MATCH)
    return aligned, hyp_wrong, ref_wrong


class _BandedDistance:
    """Word edit distance from hypotheses of one length to one reference, and its alignment, in tercom's band.

    Row i of the table holds the costs of turning the first i hypothesis words into each prefix of the
    reference. Shifted hypotheses share their first words with earlier ones, so rows are kept in a trie
    keyed by those words and only the rows after the shared prefix are computed again.
    """

    def __init__(self, reference: tuple[str, ...], hyp_length: int):
        self.reference, self.n = reference, hyp_length
        m = len(reference)
        self.ratio = m / hyp_length if hyp_length else 1.0
        self.width = math.ceil(self.ratio / 2 + BEAM) if BEAM < self.ratio / 2 else BEAM
        first_row = ([j for j in range(m + 1)], [REF_ONLY] * (m + 1))  # reference words with no hypothesis yet
        self.trie = ({}, first_row)

    def __call__(self, words: tuple[str, ...]) -> tuple[int, str]:
        """(edit distance, steps of one cheapest alignment)."""
        rows, node = [self.trie[1]], self.trie
        for word in words:
            if word not in node[0]:
                break
            node = node[0][word]
            rows.append(node[1])
        for i in range(len(rows), len(words) + 1):
            rows.append(self._row(rows[-1], words[i - 1], i))
            node[0][words[i - 1]] = node = ({}, rows[-1])
        return rows[-1][0][-1], self._steps(rows)

    def _row(self, above, word: str, i: int) -> tuple[list[int], list[str]]:
        m, infinity = len(self.reference), math.inf
        costs, ops = [infinity] * (m + 1), [""] * (m + 1)
        diagonal = math.floor(i * self.ratio)
        low = max(0, diagonal - self.width)
        high = m + 1 if i == self.n else min(m + 1, diagonal + self.width)
        up_costs = above[0]
        for j in range(low, high):
            # tercom's preference on equal cost: the diagonal, then an extra hypothesis word, then a missing one
            if j == 0:
                costs[j], ops[j] = up_costs[0] + 1, HYP_ONLY
                continue
            same = word == self.reference[j - 1]
            best, op = up_costs[j - 1] + (0 if same else 1), MATCH if same else SUBSTITUTE
            if up_costs[j] + 1 < best:
                best, op = up_costs[j] + 1, HYP_ONLY
            if costs[j - 1] + 1 < best:
                best, op = costs[j - 1] + 1, REF_ONLY
            costs[j], ops[j] = best, op
        return costs, ops

    def _steps(self, rows) -> str:
        steps, i, j = [], len(rows) - 1, len(self.reference)
        while i > 0 or j > 0:
            op = rows[i][1][j]
            steps.append(op)
            i -= op != REF_ONLY
            j -= op != HYP_ONLY
        return "".join(reversed(steps))
