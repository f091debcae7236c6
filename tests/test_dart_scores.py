"""metrics/dart.py: DART's scoring as the DART repository's scripts do it. The texts' rewriting on hand-checked
lines of its reference files, the first-three-texts rule, BLEU and TER against sacrebleu on that rewriting of the
test references, METEOR through the jar, and sample.py's table with the columns not computed."""
import json
import re
import shutil

import pytest

from common.errors import UserError
from metrics import score_split
from metrics.dart import NOT_COMPUTED, dart_scores, dart_text, format_dart, reference_lines


@pytest.fixture(scope="module")
def dart_dir(shared):
    return shared / "data" / "dart"


@pytest.fixture(scope="module")
def dart_test(dart_dir):
    from data import load_examples
    return load_examples("dart", "test", dart_dir)


def script_lines(texts) -> list[str]:
    """generate_input_dart.py's lines of the three *_eval reference files for one entry, written from its code:
    <lex>s without text skipped, newlines dropped, cut at \\W, whitespace collapsed, lowercased."""
    lines = [" ".join(" ".join(re.split(r"(\W)", t.strip().replace("\n", ""))).split()).lower() for t in texts if t]
    return (lines + ["", ""])[:3]


@pytest.fixture(scope="module")
def held_out(dart_test) -> tuple[list[str], list[list[str]]]:
    """Every 24th entry with two texts or more: its last text as hypothesis, the others as its references."""
    chosen = [ex.references for ex in dart_test if len(ex.references) > 1 and any(ex.references[:-1])][::24]
    return [texts[-1] for texts in chosen], [list(texts[:-1]) for texts in chosen]


def test_texts_as_the_reference_files_hold_them(dart_test):
    # lines 1 and 8 of the repository's all-delex-reference0.lex, from the test XML's first and eighth entries
    assert dart_text(dart_test[0].references[0]) == \
        "jeff daniels played in the hawaii five - o episode the flight of the jewels"
    assert dart_text(dart_test[7].references[0]) == \
        "the date for the tournament mcdonald ' s wpga championship is 9 aug 1998 ."
    assert dart_text("In the 2001 movie Piñero, Södra Ærø") == "in the 2001 movie piñero , södra ærø"  # no ASCII
    assert dart_text("a time of 1:02:38 in Washington D.C.\tUSA") == "a time of 1 : 02 : 38 in washington d . c . usa"
    assert dart_text(" New\nYork ") == "newyork"  # the script drops a newline, it does not make it a space


def test_the_first_three_texts_that_are_not_empty(dart_test):
    assert reference_lines(["", "A b", "c-d", "", "E", "F"]) == ["a b", "c - d", "e"]
    assert reference_lines(["One."]) == ["one .", "", ""]
    # the test XML's entry Id116 has a second <lex> with no text, which the reference files leave out
    assert dart_test[115].references[1] == ""
    assert reference_lines(dart_test[115].references) == \
        ["reserved ( previously g721 ) has 1 channel and 8000 hz clock rate", "", ""]
    assert all(reference_lines(ex.references) == script_lines(ex.references) for ex in dart_test)


def test_bleu_and_ter_as_sacrebleu_computes_them_on_the_reference_files(held_out):
    """BLEU over the three reference lines, empty ones included; TER against the first alone."""
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses, references = held_out
    lines = [script_lines(group) for group in references]
    assert sum(group.count("") for group in lines) > 50 and sum(len(g) > 3 for g in references) > 10
    hyps = [script_lines([h])[0] for h in hypotheses]
    bleu = sacrebleu.corpus_bleu(hyps, list(zip(*lines)), tokenize="none", smooth_method="none", force=True).score
    ter = sacrebleu.metrics.TER().corpus_score(hyps, [[group[0] for group in lines]]).score / 100
    scores = dart_scores(hypotheses, references, meteor_too=False)
    assert (scores["BLEU"], scores["TER"]) == (pytest.approx(bleu, abs=1e-9), pytest.approx(ter, abs=1e-12))
    # the second reference word for word: BLEU's best, but TER reads only the first (3 of its 4 words substituted)
    scores = dart_scores(["The cat sat."], [["A dog ran.", "The cat sat."]], meteor_too=False)
    assert scores["BLEU"] == pytest.approx(100) and scores["TER"] == pytest.approx(3 / 4)


def test_a_table_needs_a_text_to_match():
    with pytest.raises(UserError, match="table 1 has only empty references"):
        dart_scores(["a", "b"], [["a"], ["", ""]], meteor_too=False)


def test_meteor_is_against_the_first_reference_alone(java_meteor, held_out):
    from metrics.coco import meteor
    assert dart_scores(["The cat sat on the mat."], [["the cat sat on the mat .", "a dog"]])["METEOR"] == \
        pytest.approx(1.0)
    second = dart_scores(["A dog."], [["The cat sat on the mat.", "A dog."]])["METEOR"]
    assert second < 0.2
    # the 7 empty references of prepare_files.py's file change nothing: the jar keeps the first of equal ones
    hypotheses, references = (part[:80] for part in held_out)
    first = [[script_lines(group)[0]] for group in references]
    assert dart_scores(hypotheses, references)["METEOR"] == \
        pytest.approx(meteor([script_lines([h])[0] for h in hypotheses], first), abs=1e-12)


@pytest.fixture(scope="module")
def java_meteor():
    pytest.importorskip("pycocoevalcap", reason="METEOR needs the optional pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("METEOR needs Java on PATH")


def test_format_dart_in_the_papers_columns():
    table = format_dart({"BLEU": 46.43, "METEOR": 0.3849, "TER": 0.4561})
    assert [line.split() for line in table.split("\n")] == [["BLEU", "MET", "TER", "Mover", "BERT", "BLEURT"],
                                                            ["46.4", "0.38", "0.46", "-", "-", "-"]]


def test_a_split_scores_without_java_and_skips_an_entry_without_text(dart_test, monkeypatch):
    """No Java: BLEU and TER, and both reasons. An entry with no text has no reference line, so it is not scored."""
    from data import Example
    from metrics import coco
    monkeypatch.setattr(coco.shutil, "which", lambda name: None)
    examples = [*dart_test[:20], Example("Mars Hill College : joined : 1973", ())]
    texts = [ex.references[0] for ex in dart_test[:20]] + ["not scored"]
    scores, missing = score_split("dart", examples, texts, coco=True)
    assert scores == {"BLEU": pytest.approx(100), "TER": pytest.approx(0)}
    assert missing.startswith(f"{NOT_COMPUTED}; METEOR needs Java")


def test_sample_prints_the_dart_columns_and_says_which_are_not_computed(tiny_gpt2, dart_dir, tmp_path):
    """A prefix trained 2 iterations on 20 dev triple sets (the train split is not here), then decoded on 8 test
    entries: the paper's six columns, the three neural ones not computed, and why in scores.json too."""
    import sample
    import train
    from conftest import run_main
    records = json.loads((dart_dir / "dart-v1.1.1-full-dev.json").read_text(encoding="utf-8"))
    data = tmp_path / "dart"
    data.mkdir()
    for split, part in (("train", records[:20]), ("dev", records[20:24])):
        (data / f"dart-v1.1.1-full-{split}.json").write_text(json.dumps(part), encoding="utf-8")
    (data / "dart-v1.1.1-full-test.xml").symlink_to(dart_dir / "dart-v1.1.1-full-test.xml")
    result = run_main(train.main, "--init_from", tiny_gpt2, "--dataset", "dart", "--data_dir", data,
                      "--out_dir", tmp_path / "run", "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "1")
    assert result.returncode == 0, result.stderr
    result = run_main(sample.main, "--out_dir", tmp_path / "run", "--split", "test", "--max_examples", "8",
                      "--max_new_tokens", "6", "--num_beams", "2", "--no-coco")
    assert result.returncode == 0, result.stderr
    decoded, header, values, why, written = result.stdout.splitlines()
    assert decoded.startswith("dart test: 8 tables, beam 2")
    assert header.split() == ["BLEU", "MET", "TER", "Mover", "BERT", "BLEURT"]
    cells = values.split()
    assert float(cells[0]) >= 0 and cells[1] == "-" and float(cells[2]) > 0 and cells[3:] == ["-"] * 3
    assert why == f"({NOT_COMPUTED})"
    summary = json.loads((tmp_path / "run" / "eval" / "dart-test" / "scores.json").read_text(encoding="utf-8"))
    assert summary["scores"].keys() == {"BLEU", "TER"} and summary["missing"] == NOT_COMPUTED
    assert written.startswith("texts, references and scores in ")
