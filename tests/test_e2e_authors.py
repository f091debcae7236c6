"""--e2e_text authors: the E2E references as the paper's authors tokenized them (data/e2e_authors.py), checked
line by line against their dev and test files, and trained on, decoded and scored as they did."""
import pytest

from common import UserError
import sample
import train
from conftest import run_main
from data import load_examples, tokenized_split
from data.e2e_authors import authors_text
from metrics import e2e_scores, score_split, scores_table
from sample import as_the_authors_decode

AUTHORS_FILES = {"dev": "src1_valid.txt", "test": "src1_test.txt"}


@pytest.fixture(scope="module")
def authors_lines(shared):
    """{split: [(table, text), ...]}: the authors' files, one `table||text ` per line."""
    folder = shared / "data" / "e2e-authors"
    if not folder.is_dir():
        pytest.skip(f"needs the authors' E2E files in {folder}")
    return {split: [tuple(line.strip().split("||")) for line in (folder / name).read_text(encoding="utf-8")
                    .splitlines()] for split, name in AUTHORS_FILES.items()}


@pytest.mark.full_data
@pytest.mark.parametrize("split", ["dev", "test"])
def test_authors_text_reproduces_their_files(e2e_dir, authors_lines, split):
    """At least 99% of the lines come out exactly as in the authors' file (measured: all but one of 4,672 dev and
    of 4,693 test lines); the tables and their order were equal before any rewriting."""
    official = load_examples("e2e", split, e2e_dir)
    authors = load_examples("e2e", split, e2e_dir, text_form="authors")
    ours = [(ex.table, ref) for ex in authors for ref in ex.references]
    theirs = authors_lines[split]
    assert [table for table, _ in ours] == [table for table, _ in theirs]
    agreement = sum(a == b for a, b in zip(ours, theirs)) / len(theirs)
    assert len(ours) == len(theirs) and agreement >= 0.99, agreement
    before = sum(ref == text for ref, (_, text) in zip((ref for ex in official for ref in ex.references), theirs))
    assert before / len(theirs) < 0.1  # the official text is not already theirs


@pytest.mark.parametrize("official, dev_file, test_file", [
    ("Alimentum isn't family-friendly.", "Alimentum isn 't family - friendly .",
     "Alimentum is n't family - friendly ."),
    ("It's £20-£25, a 5-star 'average' place...", "It 's £ 20- £ 25 , a 5 - star ' average ' place ...",
     "It 's £ 20-£25 , a 5-star ' average ' place ..."),
    ("Near  Café Sicilia,the price is £20-25.", "Near Café Sicilia , the price is £ 20 - 25 .",
     "Near Café Sicilia , the price is £ 20 - 25 ."),
])
def test_the_two_files_tokenized_differently(official, dev_file, test_file):
    assert authors_text(official, "dev") == authors_text(official, "train") == dev_file
    assert authors_text(official, "test") == test_file


def test_authors_text_is_for_e2e_only(e2e_dir, webnlg_dir):
    with pytest.raises(UserError, match="exists for E2E only"):
        load_examples("webnlg", "test", webnlg_dir, text_form="authors")
    with pytest.raises(UserError, match="unknown text form 'ptb'"):
        load_examples("e2e", "test", e2e_dir, text_form="ptb")


def test_training_sequences_hold_the_authors_text(e2e_dir, tokenizer):
    first = load_examples("e2e", "dev", e2e_dir)[0]
    for text_form, text in [("official", first.references[0]), ("authors", authors_text(first.references[0], "dev"))]:
        sequences = tokenized_split("e2e", "dev", tokenizer, e2e_dir, text_form)  # cached apart from each other
        assert tokenizer.decode(sequences[0][sequences.loss_starts[0]:].tolist()) == f" {text} <|endoftext|>"


def test_decoded_text_is_cleaned_up_as_transformers_decodes(gpt2_dir, tokenizer):
    assert as_the_authors_decode(" Blue Spice is n't cheap , it 's near Café Sicilia . ") == \
        "Blue Spice isn't cheap, it's near Café Sicilia."
    assert as_the_authors_decode("  ") == "Error"  # what their run_generation.py writes for an empty text
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Tokenizer(str(gpt2_dir / "encoder.json"), str(gpt2_dir / "vocab.bpe"))
    for text in [" a ' b 'm c 've d 're e ? f ! g , h .", " The Mill 's family - friendly . You 'll see ! ",
                 " There is a ' 5 out of 5 ' rated , £ 20 - 25 pub called ' The Mill ' ."]:
        ids = tokenizer.encode_ordinary(text)
        # transformers 3 applied this in decode(..., clean_up_tokenization_spaces=True); today's refuses for BPE
        assert as_the_authors_decode(tokenizer.decode(ids)) == hf.clean_up_tokenization(hf.decode(ids)).strip()


@pytest.mark.full_data
def test_scoring_against_the_authors_references(e2e_dir):
    """Their own references, decoded as they decode, score nearly perfectly against the authors' references (the
    clean-up joins quotes: "called ' Aromi '" -> "called'Aromi'"), far less against the official ones: the
    hypotheses keep "family - friendly"."""
    authors = load_examples("e2e", "dev", e2e_dir, text_form="authors")
    official = load_examples("e2e", "dev", e2e_dir)
    texts = [as_the_authors_decode(ex.references[0]) for ex in authors]
    assert e2e_scores(texts, [ex.references for ex in authors], coco=False)["BLEU"] > 99  # measured 99.3
    assert e2e_scores(texts, [ex.references for ex in official], coco=False)["BLEU"] < 96  # measured 94.9
    assert float(scores_table("e2e", *score_split("e2e", authors, texts, coco=False)).split("\n")[1].split()[0]) > 99


def test_train_and_sample_with_the_authors_text(tiny_gpt2, e2e_dir, tmp_path):
    from runs.checkpoint import read_training_checkpoint
    result = run_main(train.main, "--init_from", tiny_gpt2, "--data_dir", e2e_dir, "--out_dir",
                        tmp_path, "--e2e_text", "authors", "--max_iters", "2", "--eval_interval", "2",
                        "--eval_iters", "1", "--batch_size", "2")
    assert result.returncode == 0, result.stderr
    assert read_training_checkpoint(tmp_path / "ckpt.pt")["args"]["e2e_text"] == "authors"
    result = run_main(sample.main, "--out_dir", tmp_path, "--split", "test", "--max_examples", "3",
                        "--max_new_tokens", "4", "--no-coco")
    assert result.returncode == 0, result.stderr
    # sample.py takes the run's text form: WebNLG has no authors' form, so asking for it on this run fails
    result = run_main(sample.main, "--out_dir", tmp_path, "--split", "test", "--dataset", "webnlg")
    assert result.returncode == 2 and "--e2e_text authors rewrites E2E references" in result.stderr
    result = run_main(train.main, "--dataset", "webnlg", "--e2e_text", "authors", "--out_dir", tmp_path / "w")
    assert result.returncode == 2 and "--e2e_text authors rewrites E2E references" in result.stderr
