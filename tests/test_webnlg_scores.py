"""metrics/webnlg.py and metrics/ter.py: the WebNLG challenge's scoring. BLEU and TER against sacrebleu on the
challenge's tokenization of WebNLG test references, the ASCII folding against unidecode, hand-computed cases for
what those cannot check (empty references, shifts), METEOR through the jar, and sample.py's table."""
import random
import shutil

import pytest

from common.errors import UserError
from metrics.ter import ter
from metrics.webnlg import ascii_fold, format_webnlg, hypothesis_text, multi_bleu, reference_text, webnlg_scores


@pytest.fixture(scope="module")
def webnlg_test(webnlg_dir):
    from data import load_examples
    return load_examples("webnlg", "test", webnlg_dir)


@pytest.fixture(scope="module")
def held_out(webnlg_test) -> tuple[list[str], list[list[str]]]:
    """For tables with 4 or more references: the first as hypothesis, the next three as references, tokenized as
    the challenge's scripts tokenize them; then tables with 2 and 3, whose missing references are empty."""
    hypotheses, references = [], []
    for example in webnlg_test:
        first, *rest = example.references
        if rest:
            hypotheses.append(hypothesis_text(first))
            references.append([reference_text(r) for r in rest[:3]] + [""] * (3 - len(rest[:3])))
    return hypotheses, references


def test_normalization_as_the_challenge_scripts():
    assert reference_text("Aarhus Airport's runway is 2,702.0 m long – “Ærø”") == \
        "aarhus airport ' s runway is 2 , 702 . 0 m long - \" aero \""
    assert hypothesis_text("  Ærøskøbing's Café  ") == "aeroskobing ' s cafe"
    assert hypothesis_text(reference_text("A.C. Cesena (2014–15)")) == reference_text("A.C. Cesena (2014–15)")


def test_ascii_fold_is_unidecodes_on_the_webnlg_files_and_latin_text(webnlg_dir):
    unidecode = pytest.importorskip("unidecode").unidecode
    from data import load_examples
    characters = {c for split in ("train", "dev", "test")
                  for example in load_examples("webnlg", split, webnlg_dir)
                  for text in (example.table, *example.references) for c in text if not c.isascii()}
    assert len(characters) > 30
    characters |= {chr(c) for c in [*range(0xA1, 0x180), *range(0x2010, 0x2023), 0x2026, 0x2032, 0x2033, 0x2039,
                                    0x203A, 0x20AC]} - {"\xad"}  # a soft hyphen is invisible; unidecode drops it
    assert {c: ascii_fold(c) for c in characters} == {c: unidecode(c) for c in characters}


def test_multi_bleu_matches_sacrebleu_on_pretokenized_text(held_out):
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses, references = held_out
    assert sum(group.count("") for group in references) > 100  # empty references take part
    streams = [[group[i] for group in references] for i in range(3)]
    expected = sacrebleu.corpus_bleu(hypotheses, streams, tokenize="none", smooth_method="none", force=True).score
    assert multi_bleu(hypotheses, references) == pytest.approx(expected, abs=1e-9)


def test_an_empty_reference_can_be_the_closest_length():
    """multi-bleu.perl reads the challenge's three reference files; a table with one reference has empty lines in
    the other two, and an empty line is a reference of length 0: here the closest, so no brevity penalty."""
    assert webnlg_scores(["a b c d"], [["a b c d e f g h i j"]], meteor_too=False)["BLEU"] == pytest.approx(100)
    assert multi_bleu(["a b c d"], [["a b c d e f g h i j"]]) == pytest.approx(100 * 2.718281828 ** (1 - 10 / 4))


def test_multi_bleu_is_zero_without_a_matching_4gram():
    assert multi_bleu(["a b c d e"], [["a b c x d e"]]) == 0.0


def test_ter_matches_sacrebleu(held_out):
    """On real sentences (the first 150 test tables) and on short random ones over a tiny vocabulary, where
    shifts and ties abound, and long ones that leave tercom's band of the edit-distance table."""
    sacrebleu = pytest.importorskip("sacrebleu")
    hypotheses, references = (part[:150] for part in held_out)
    rng = random.Random(0)
    words = "a b c the of is".split()
    for lengths in [(1, 12)] * 300 + [(40, 90)] * 4:
        hypotheses.append(" ".join(rng.choices(words, k=rng.randint(*lengths))))
        references.append([" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(3)])
    references = [[ref for ref in group if ref] for group in references]  # tercom reads only real references
    streams = [[group[i] if i < len(group) else None for group in references] for i in range(3)]
    expected = sacrebleu.metrics.TER().corpus_score(hypotheses, streams).score / 100
    assert ter(hypotheses, references) == pytest.approx(expected, abs=1e-12)


def test_ter_by_hand():
    # one shift of "a b" to the end, then nothing left to edit: 1 edit over 4 reference words
    assert ter(["a b c d"], [["c d a b"]]) == pytest.approx(1 / 4)
    # no shift helps: 1 substitution and 1 deletion over 3 words; the fewest edits of two references, over their
    # average length (3 + 5) / 2
    assert ter(["x y z w"], [["x q z"]]) == pytest.approx(2 / 3)
    assert ter(["x y z w"], [["x q z", "p q r s t"]]) == pytest.approx(2 / 4)
    assert ter([""], [["a b"]]) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def java_meteor():
    pytest.importorskip("pycocoevalcap", reason="METEOR needs the optional pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("METEOR needs Java on PATH")


def test_meteor_through_the_jar(java_meteor):
    from metrics.coco import meteor
    assert meteor(["the cat sat on the mat"], [["the cat sat on the mat", "", ""]]) == pytest.approx(1.0)
    partial = meteor(["the cat sat on a mat"], [["the cat sat on the mat", "", ""]])
    assert 0.3 < partial < 1.0
    assert meteor(["the cat sat on a mat"], [["a dog", "the cat sat on the mat", ""]]) == pytest.approx(partial)


def test_meteor_reports_its_progress(java_meteor, monkeypatch, capsys):
    from common.progress import Progress
    from metrics.coco import meteor
    monkeypatch.setattr(Progress, "quiet_seconds", 0)
    meteor([f"the cat sat on mat {i}" for i in range(20)], [["the cat sat on the mat"]] * 20)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[1] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)]


def test_webnlg_scores_on_held_out_references(java_meteor, webnlg_test):
    chosen = webnlg_test[:60]
    texts = [ex.references[0] for ex in chosen]
    perfect = webnlg_scores(texts, [ex.references for ex in chosen])
    assert perfect == {"METEOR": pytest.approx(1.0), "BLEU": pytest.approx(100), "TER": pytest.approx(0)}
    human = webnlg_scores(texts, [ex.references[1:] or ["-"] for ex in chosen])
    assert 20 < human["BLEU"] < 80 and 0.2 < human["METEOR"] < 0.6 and 0.2 < human["TER"] < 0.8


def test_missing_java_is_a_user_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="METEOR needs Java"):
        webnlg_scores(["a"], [["a"]])
    assert set(webnlg_scores(["a"], [["a"]], meteor_too=False)) == {"BLEU", "TER"}


def test_format_webnlg_in_the_papers_columns():
    table = format_webnlg({"seen": {"BLEU": 62.94, "METEOR": 0.4449, "TER": 0.3512},
                           "all": {"BLEU": 55.1, "TER": 0.41}})
    assert [line.split() for line in table.split("\n")] == [["BLEU", "METEOR", "TER"],
                                                            ["seen", "62.9", "0.44", "0.35"],
                                                            ["all", "55.1", "-", "0.41"]]


def test_sample_prints_the_three_metrics_for_each_category_subset(gpt2_dir, webnlg_dir, tmp_path):
    import sample
    import train
    from conftest import run_main
    from hub_checkpoint import random_hf_gpt2, write_checkpoint
    gpt2 = write_checkpoint(random_hf_gpt2(n_layer=1, n_head=2, n_embd=16, vocab_size=50257, n_positions=320),
                            tmp_path / "gpt2", tokenizer_dir=gpt2_dir)  # WebNLG texts reach 259 tokens
    result = run_main(train.main, "--init_from", gpt2, "--dataset", "webnlg", "--data_dir", webnlg_dir,
                        "--out_dir", tmp_path / "run", "--max_iters", "2", "--eval_interval", "2",
                        "--eval_iters", "1")
    assert result.returncode == 0, result.stderr
    result = run_main(sample.main, "--out_dir", tmp_path / "run", "--split", "test", "--max_examples", "8",
                        "--max_new_tokens", "6", "--num_beams", "2", "--no-coco")
    assert result.returncode == 0, result.stderr
    *lines, written = result.stdout.splitlines()
    assert written.startswith("texts, references and scores in ")
    rows = [line.split() for line in lines[1:]]
    assert rows[0] == ["BLEU", "METEOR", "TER"]
    assert [row[0] for row in rows[1:]] == ["seen", "all"]  # the first 8 test tables are all of seen categories
    assert all(row[2] == "-" and float(row[3]) > 0 for row in rows[1:])
