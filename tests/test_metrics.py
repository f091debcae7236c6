"""metrics/: BLEU and NIST against independent implementations on the E2E dev references, hand-computed cases
for what those cannot check, the COCO scorers' sanity, and the input rules."""
import math
import shutil
import sys
from collections import Counter

import pytest

from common.errors import UserError
from metrics import bleu, coco_scores, e2e_scores, format_scores, nist
from metrics.mteval import tokenize


@pytest.fixture(scope="module")
def held_out(e2e_dir) -> tuple[list[str], list[list[str]]]:
    """Each dev MR's first reference as the hypothesis, the remaining ones as its references."""
    from data import load_examples
    examples = load_examples("e2e", "dev", e2e_dir)
    groups = [example.references for example in examples if len(example.references) > 1]
    return [group[0] for group in groups], [list(group[1:]) for group in groups]


def _short_hypotheses(hypotheses: list[str], order: int) -> int:
    return sum(len(tokenize(h)) < order for h in hypotheses)


# BLEU and NIST against independent implementations ----------------------------------------------------------------

@pytest.mark.parametrize("lowercase", [True, False])
def test_bleu_matches_sacrebleu(held_out, lowercase):
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses, references = held_out
    # sacrebleu's 13a tokenizer, closest reference length (shorter on a tie) and brevity penalty are mteval's. The
    # two differ by design only where an n-gram order has no match (sacrebleu smooths it, mteval uses 1e-15) or a
    # hypothesis is shorter than 4 tokens (sacrebleu counts 0 candidate n-grams, mteval L - n + 1); neither
    # happens on human references.
    assert _short_hypotheses(hypotheses, 4) == 0
    streams = [[group[i] if i < len(group) else None for group in references]  # None: no i-th reference
               for i in range(max(map(len, references)))]
    expected = sacrebleu.corpus_bleu(hypotheses, streams, tokenize="13a", lowercase=lowercase).score
    assert bleu(hypotheses, references, lowercase=lowercase) == pytest.approx(expected, abs=1e-9)


def test_nist_matches_nltk(held_out):
    nist_score = pytest.importorskip("nltk.translate.nist_score")
    hypotheses, references = held_out
    # nltk scores each hypothesis against its single best reference, while mteval clips n-gram counts against
    # all references at once (as BLEU does) and compares lengths with the average reference; with one reference
    # per hypothesis both are Doddington's formula, so give each hypothesis one. nltk counts no n-grams for a
    # hypothesis shorter than n tokens, mteval L - n + 1, so check there is none.
    assert _short_hypotheses(hypotheses, 5) == 0
    single = [[group[0]] for group in references]
    expected = nist_score.corpus_nist([[tokenize(group[0])] for group in references],
                                      [tokenize(h) for h in hypotheses], n=5)
    assert nist(hypotheses, single) == pytest.approx(expected, rel=1e-12)


# Properties and hand-computed cases --------------------------------------------------------------------------------

def test_a_reference_scored_against_its_group_is_perfect(held_out):
    hypotheses, references = held_out
    assert bleu(hypotheses, [[h, *group] for h, group in zip(hypotheses, references)]) == pytest.approx(100)
    # Against one reference per MR, the reference itself matches every n-gram at equal length, so it reaches
    # NIST's maximum for those references: the mean information of their n-grams, summed over n.
    single = [group[0] for group in references]
    counts = Counter()
    for tokens in map(tokenize, single):
        counts[()] += len(tokens)
        counts.update(tuple(tokens[i:i + n]) for n in range(1, 6) for i in range(len(tokens) - n + 1))
    maximum = sum(
        sum(c * math.log2(counts[gram[:-1]] / c) for gram, c in counts.items() if len(gram) == n)
        / sum(c for gram, c in counts.items() if len(gram) == n)
        for n in range(1, 6))
    assert nist(single, [[ref] for ref in single]) == pytest.approx(maximum, rel=1e-12)
    assert nist(hypotheses, [[ref] for ref in single]) < maximum


def test_hypothesis_longer_than_every_reference_has_no_brevity_penalty():
    # p_1..p_4 = 5/6, 4/5, 3/4, 2/3, whose product is 1/3. NIST: only unigrams carry information (every longer
    # reference n-gram is as frequent as its prefix), 5 matches of log2(5 reference words / 1) over 6 candidates.
    assert bleu(["a b c d e f"], [["a b c d e"]]) == pytest.approx(100 * (1 / 3) ** 0.25)
    assert nist(["a b c d e f"], [["a b c d e"]]) == pytest.approx(5 / 6 * math.log2(5))


def test_bleu_brevity_uses_the_closest_reference_and_the_shorter_on_a_tie():
    # References of 3 and 5 tokens are both 1 away from the 4-token hypothesis: r = 3 < c, so no penalty.
    assert bleu(["a b c d"], [["a b c", "a b c d e"]]) == pytest.approx(100)
    assert bleu(["a b c d"], [["a b c d e"]]) == pytest.approx(100 * math.exp(1 - 5 / 4))


def test_nist_with_several_references():
    # Information counts n-grams over all references (18 words; "a", "b", "c", "c d"... occur twice), matches
    # are clipped per reference, and the length penalty compares 6 words with the average reference, 9 words:
    # exp(-beta * ln(6/9)^2) = 1/2 by the choice of beta.
    unigrams = (3 * math.log2(18 / 2) + 3 * math.log2(18 / 1)) / 6
    longer = 1 / 5 + 1 / 4 + 1 / 3  # "c d", "b c d", "a b c d" each carry log2(2 / 1) = 1 bit
    expected = 0.5 * (unigrams + longer)
    assert nist(["a b c d e f"], [["a b c", "a b c d e f g h i j k l m n o"]]) == pytest.approx(expected)


def test_empty_hypothesis_scores_as_the_official_script_does(held_out):
    # The official tokenizer turns "" into one empty token: c = 1 (closest reference 2 tokens), no matches, and
    # candidate counts 1, 0, -1, -2, each floored at 1e-9 under matches floored at 1e-15.
    expected = 100 * math.exp(1 - 2 / 1) * math.exp((math.log(1e-15) + 3 * math.log(1e-15 / 1e-9)) / 4)
    assert bleu([""], [["a b"]]) == pytest.approx(expected)
    assert bleu(["   "], [["a b"]]) == pytest.approx(expected)
    assert nist([""], [["a b"]]) == 0.0  # the official script divides by zero here
    # In a corpus of perfect hypotheses, an empty one costs score. (Emptying a poor hypothesis can raise corpus
    # BLEU, as dropping it would: its n-grams leave the denominators.)
    hypotheses, references = held_out
    perfect = [[h, *group] for h, group in zip(hypotheses, references)]
    with_empty = ["", *hypotheses[1:]]
    assert 0 < bleu(with_empty, perfect) < bleu(hypotheses, perfect)
    assert 0 < nist(with_empty, perfect) < nist(hypotheses, perfect)


def test_case_and_tokenization():
    assert bleu(["The Eagle is near Burger King."], [["the eagle is near burger king ."]]) == pytest.approx(100)
    assert bleu(["The Eagle is near Burger King."], [["the eagle is near burger king ."]], lowercase=False) < 50
    assert tokenize("Prices are £20-25, rated 3.5 (1,000 reviews).") == [
        "prices", "are", "£20", "-", "25", ",", "rated", "3.5", "(", "1,000", "reviews", ")", "."]
    assert tokenize("A family-friendly pub, isn't it &amp; more") == [
        "a", "family-friendly", "pub", ",", "isn't", "it", "&", "more"]


# Input rules and the report ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("hypotheses, references, complaint", [
    (["a", "b"], [["a"]], "2 hypotheses but 1 reference groups"),
    (["a"], ["a"], "list of lists"),
    ("a", [["a"]], "list of strings"),
    ([], [], "nothing to score"),
    (["a"], [[]], "no references"),
])
@pytest.mark.parametrize("metric", [bleu, nist, coco_scores])
def test_malformed_inputs_are_user_errors(metric, hypotheses, references, complaint):
    with pytest.raises(UserError, match=complaint):
        metric(hypotheses, references)


def test_format_scores_in_the_papers_layout():
    table = format_scores({"BLEU": 70.34, "NIST": 8.8163, "METEOR": 46.28, "ROUGE-L": 72.06, "CIDEr": 2.4632})
    assert table.split("\n")[0].split() == ["BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"]
    assert table.split("\n")[1].split() == ["70.3", "8.82", "46.3", "72.1", "2.46"]
    assert format_scores({"BLEU": 70.34, "NIST": 8.8163}).split("\n")[1].split() == ["70.3", "8.82", "-", "-", "-"]


# METEOR, ROUGE-L, CIDEr (pycocoevalcap and Java) --------------------------------------------------------------------

def test_missing_pycocoevalcap_or_java_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)  # makes the import fail
    with pytest.raises(UserError, match="pip install pycocoevalcap"):
        coco_scores(["a"], [["a"]])
    monkeypatch.undo()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="pip install pycocoevalcap"):
        coco_scores(["a"], [["a"]])
    assert set(e2e_scores(["a"], [["a"]], coco=False)) == {"BLEU", "NIST"}


@pytest.fixture(scope="module")
def coco_available():
    pytest.importorskip("pycocoevalcap", reason="METEOR, ROUGE-L and CIDEr need the optional pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("METEOR, ROUGE-L and CIDEr need Java on PATH")


def test_coco_scores_by_hand(coco_available):
    # ROUGE-L takes the best LCS precision and the best LCS recall over the references separately, then
    # F = (1 + b^2) P R / (R + b^2 P) with b = 1.2, averaged over hypotheses:
    # 1) P = 5/6 ("the cat on the mat" in the first reference), R = 1 ("cat sat" is all of the second);
    # 2) P = R = 1/2; 3) the empty hypothesis scores 0.
    first = (1 + 1.2 ** 2) * (5 / 6) * 1 / (1 + 1.2 ** 2 * 5 / 6)
    scores = e2e_scores(["The cat sat on the mat.", "a dog", ""],
                        [["the cat is on the mat", "cat sat"], ["a cat"], ["a bird"]])
    assert set(scores) == {"BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr"}
    assert scores["ROUGE-L"] == pytest.approx(100 * (first + 0.5 + 0) / 3)
    assert 0 < scores["METEOR"] < 100 and scores["CIDEr"] > 0


def test_coco_scores_on_dev(coco_available, held_out):
    hypotheses, references = (part[:100] for part in held_out)  # METEOR's start-up dominates; 100 MRs suffice
    perfect = coco_scores(hypotheses, [[h, *group] for h, group in zip(hypotheses, references)])
    assert perfect["METEOR"] == pytest.approx(100) and perfect["ROUGE-L"] == pytest.approx(100)
    human = coco_scores(hypotheses, references)
    assert 30 < human["METEOR"] < perfect["METEOR"]
    assert 50 < human["ROUGE-L"] < perfect["ROUGE-L"]
    assert 0.5 < human["CIDEr"] < perfect["CIDEr"]
