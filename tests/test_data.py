"""data/: the E2E and WebNLG files -> linearized tables and references -> token sequences -> padded batches."""
import csv
import zipfile

import numpy as np
import pytest
import torch

from common import UserError, cache_dir
from data import (IGNORE_INDEX, SEEN_CATEGORIES, Sequences, category_subset, load_examples, prompt_ids,
                  tokenized_split)
from data.e2e import linearize

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def e2e(e2e_dir):
    return {split: load_examples("e2e", split, e2e_dir) for split in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def webnlg_test(webnlg_dir):
    return load_examples("webnlg", "test", webnlg_dir)


def write_e2e_csv(folder, rows, name="devset.csv"):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["mr", "ref"], *rows])
    return folder


def npz_files(folder):
    return sorted(folder.rglob("*.npz")) if folder.exists() else []


# --- E2E ---------------------------------------------------------------------------------------------------

@pytest.mark.full_data
@pytest.mark.parametrize("split, refs, mrs", [("train", 42_061, 42_057), ("dev", 4_672, 547), ("test", 4_693, 630)])
def test_e2e_counts(e2e, split, refs, mrs):
    """References = CSV rows; Examples = runs of consecutive rows with the same MR (training rows are shuffled,
    so almost every training row is a run of its own)."""
    assert sum(len(ex.references) for ex in e2e[split]) == refs
    assert len(e2e[split]) == mrs


def test_e2e_linearization_follows_the_papers_data(e2e):
    first, _, third, fourth = e2e["train"][:4]
    assert first.table == ("name : The Vaults | Type : pub | price : more than £ 30 | customer rating : 5 out of 5 "
                           "| near : Café Adriatic")
    assert first.references == ("The Vaults pub near Café Adriatic has a 5 star rating.  Prices start at £30.",)
    assert third.table == ("name : The Eagle | Type : coffee shop | food : Japanese | price : less than £ 20 | "
                           "customer rating : low | area : riverside | family friendly : yes | near : Burger King")
    assert fourth.table == ("name : The Mill | Type : coffee shop | food : French | price : £ 20 - 25 | "
                            "area : riverside | near : The Sorrento")
    assert e2e["dev"][0].table == "name : Alimentum | area : city centre | family friendly : no"
    assert e2e["dev"][0].references[0] == ("There is a place in the city centre, Alimentum, that is not "
                                           "family-friendly.")
    assert [linearize(f"name[A], priceRange[{p}]") for p in ("cheap", "moderate", "high")] == \
        ["name : A | price : cheap", "name : A | price : moderate", "name : A | price : high"]


def test_e2e_multiline_references_become_one_line(e2e):
    refs = [ref for ex in e2e["train"] for ref in ex.references]
    joined = [ref for ref in refs if "The Bakers. This coffee shop" in ref]
    assert joined == ["Giraffe is a coffee shop providing take a service the high price range. It is located near "
                      "The Bakers. This coffee shop is a high customer rating"] * 2
    assert not any("\n" in ref or "\r" in ref for ref in refs)


def test_e2e_zip_and_extracted_csvs_agree(e2e, e2e_dir, tmp_path):
    with zipfile.ZipFile(e2e_dir / "e2e-dataset.zip") as archive:
        archive.extractall(tmp_path)  # its own layout: e2e-dataset/*.csv
    for split in ("train", "dev", "test"):
        assert load_examples("e2e", split, tmp_path) == e2e[split]
    (tmp_path / "e2e-dataset" / "devset.csv").rename(tmp_path / "devset.csv")  # or the CSV right in data_dir
    assert load_examples("e2e", "dev", tmp_path) == e2e["dev"]


def test_e2e_without_data_dir_uses_the_zip_in_the_user_cache(e2e, e2e_dir, tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("PREFIX_TUNING_CACHE", str(tmp_path))
    (tmp_path / "data" / "e2e").mkdir(parents=True)
    (tmp_path / "data" / "e2e" / "e2e-dataset.zip").write_bytes((e2e_dir / "e2e-dataset.zip").read_bytes())
    assert load_examples("e2e", "dev") == e2e["dev"]  # the "downloaded" zip is there, so nothing is fetched
    tokenized_split("e2e", "dev", tokenizer)
    assert len(npz_files(tmp_path / "data" / "e2e")) == 1


@pytest.mark.full_data
def test_e2e_is_downloaded_once_when_no_data_dir_is_given(e2e_dir, tmp_path, monkeypatch):
    import shutil
    from data import e2e as e2e_module
    from loopback import FileServer
    shutil.copy(e2e_dir / "e2e-dataset.zip", tmp_path / "e2e-dataset.zip")
    server = FileServer(tmp_path)
    monkeypatch.setattr(e2e_module, "URL", f"{server.url}/e2e-dataset.zip")
    monkeypatch.setenv("PREFIX_TUNING_CACHE", str(tmp_path / "cache"))
    try:
        assert len(load_examples("e2e", "dev")) == 547
        server.stop()  # the second time, from the cache alone
        assert len(load_examples("e2e", "test")) == 630
    finally:
        server.stop()
    assert server.requests == ["/e2e-dataset.zip"]


# --- WebNLG ------------------------------------------------------------------------------------------------

@pytest.mark.full_data
@pytest.mark.parametrize("split, entries, refs, good_refs", [
    ("train", 6_940, 18_102, 18_025), ("dev", 872, 2_268, 2_258), ("test", 1_862, 4_928, 4_928)])
def test_webnlg_counts(webnlg_dir, split, entries, refs, good_refs):
    """Examples = <entry>s; references = all their <lex>; training texts = the lex marked comment="good"."""
    examples = load_examples("webnlg", split, webnlg_dir)
    assert (len(examples), sum(len(ex.references) for ex in examples)) == (entries, refs)
    training = load_examples("webnlg", split, webnlg_dir, for_training=True)
    assert sum(len(ex.references) for ex in training) == good_refs


@pytest.mark.full_data
def test_webnlg_seen_and_unseen_categories(webnlg_test):
    seen, unseen = category_subset(webnlg_test, "seen"), category_subset(webnlg_test, "unseen")
    assert (len(seen), sum(len(ex.references) for ex in seen)) == (971, 2_495)
    assert (len(unseen), sum(len(ex.references) for ex in unseen)) == (891, 2_433)
    assert {ex.category for ex in seen} == SEEN_CATEGORIES
    assert {ex.category for ex in unseen} == {"Athlete", "Artist", "CelestialBody", "MeanOfTransportation",
                                              "Politician"}
    assert category_subset(webnlg_test, "all") == webnlg_test


def test_webnlg_linearization(webnlg_test):
    first = webnlg_test[0]
    assert (first.table, first.category) == ("Abilene_Regional_Airport : cityServed : Abilene,_Texas", "Airport")
    assert first.references == ("Abilene, Texas is served by the Abilene regional airport.",
                                "Abilene Regional Airport serves the city of Abilene in Texas.")
    tables = {ex.table for ex in webnlg_test}
    assert ('Alan_Bean : nationality : United_States | Alan_Bean : birthPlace : Wheeler,_Texas | '
            'Alan_Bean : status : "Retired"') in tables
    # values as in the file (double space kept), XML entities decoded
    assert any('A_Long_Long_Way : mediaType : "Print  & Paperback"' in table for table in tables)


# --- tokens ------------------------------------------------------------------------------------------------

def test_sequence_layout_and_loss_mask(tokenizer):
    pairs = [("name : Café Rouge | price : £ 20 - 25", "Café Rouge costs £20-25."), ("a : b", "Short.")]
    sequences = Sequences.from_pairs(tokenizer, pairs)
    for i, (table, text) in enumerate(pairs):
        full = f" {table} {EOT} {text} {EOT}"
        ids = sequences[i].tolist()
        assert tokenizer.decode(ids) == full
        assert ids == tokenizer.encode(full, allowed_special={EOT})
        start = sequences.loss_starts[i]
        assert ids[:start] == prompt_ids(tokenizer, table)
        assert ids[start:] == tokenizer.encode_ordinary(f" {text} ") + [tokenizer.eot_token]

    idx, targets = sequences.batch(torch.tensor([0, 1]))
    long, short = sequences[0].tolist(), sequences[1].tolist()
    assert idx.shape == targets.shape == (2, len(long) - 1) and len(long) == sequences.longest
    assert idx[0].tolist() == long[:-1] and targets[0].tolist()[-1] == tokenizer.eot_token
    n = len(short) - 1
    assert idx[1, :n].tolist() == short[:-1] and (idx[1, n:] == tokenizer.eot_token).all()
    assert (targets[1, n:] == IGNORE_INDEX).all()
    for row, ids in enumerate((long, short)):
        start = sequences.loss_starts[row]
        assert (targets[row, :start - 1] == IGNORE_INDEX).all()  # no loss on predicting the table or the first EOT
        assert targets[row][targets[row] != IGNORE_INDEX].tolist() == ids[start:]


@pytest.mark.full_data
def test_e2e_train_sequences(e2e_dir, e2e, tokenizer):
    sequences = tokenized_split("e2e", "train", tokenizer, e2e_dir)
    assert len(sequences) == 42_061 and sequences.tokens.dtype == np.int32
    assert sequences.longest == sequences.lengths.max() and "42,061 sequences" in sequences.describe()
    first = e2e["train"][0]
    assert tokenizer.decode(sequences[0].tolist()) == f" {first.table} {EOT} {first.references[0]} {EOT}"
    eot = tokenizer.eot_token
    before_text = sequences.tokens[sequences.offsets[:-1] + sequences.loss_starts - 1]
    assert (before_text == eot).all() and (sequences.tokens[sequences.offsets[1:] - 1] == eot).all()
    assert sum(int((sequences[i] == eot).sum()) for i in range(0, 42_061, 97)) == 2 * len(range(0, 42_061, 97))


# --- the tokenized cache -----------------------------------------------------------------------------------

class Renamed:
    """A tokenizer that claims another name, or refuses to encode: for checking when the cache is used."""
    def __init__(self, real, name=None, refuse=False):
        self.real, self.name, self.refuse = real, name or real.name, refuse

    def __getattr__(self, attr):
        return getattr(self.real, attr)

    def encode_ordinary(self, text):
        assert not self.refuse, "tokenized again instead of reading the cache"
        return self.real.encode_ordinary(text)


@pytest.fixture
def small_e2e(tmp_path):
    return write_e2e_csv(tmp_path / "e2e", [["name[Aromi], eatType[pub]", "Aromi is a pub."],
                                            ["name[Aromi], eatType[pub]", "A pub: Aromi."]])


def test_cache_is_read_the_second_time(small_e2e, tokenizer):
    first = tokenized_split("e2e", "dev", tokenizer, small_e2e)
    assert len(npz_files(small_e2e)) == 1  # a writable data folder holds its own cache
    again = tokenized_split("e2e", "dev", Renamed(tokenizer, refuse=True), small_e2e)
    assert np.array_equal(again.tokens, first.tokens) and np.array_equal(again.loss_starts, first.loss_starts)
    tokenized_split("e2e", "dev", Renamed(tokenizer, name="other"), small_e2e)
    assert len(npz_files(small_e2e)) == 2  # another tokenizer, another cache


def test_changed_source_is_tokenized_again(small_e2e, tokenizer):
    tokenized_split("e2e", "dev", tokenizer, small_e2e)
    write_e2e_csv(small_e2e, [["name[Aromi], eatType[pub]", "Aromi is a pub by the river."]])
    sequences = tokenized_split("e2e", "dev", tokenizer, small_e2e)
    assert len(sequences) == 1 and "by the river" in tokenizer.decode(sequences[0].tolist())


def test_crash_while_saving_leaves_no_cache(small_e2e, tokenizer, monkeypatch):
    def crash(f, **arrays):
        f.write(b"PK half a file")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        tokenized_split("e2e", "dev", tokenizer, small_e2e)
    assert list(small_e2e.iterdir()) == [small_e2e / "devset.csv"]
    monkeypatch.undo()
    tokenized_split("e2e", "dev", tokenizer, small_e2e)
    assert len(npz_files(small_e2e)) == 1


def test_cache_goes_to_the_user_cache_when_the_data_folder_is_read_only(small_e2e, tokenizer):
    before = npz_files(cache_dir("data", "e2e"))
    small_e2e.chmod(0o555)
    try:
        tokenized_split("e2e", "dev", tokenizer, small_e2e)
        assert list(small_e2e.iterdir()) == [small_e2e / "devset.csv"]
    finally:
        small_e2e.chmod(0o755)
    assert len(npz_files(cache_dir("data", "e2e"))) == len(before) + 1


# --- mistakes in the data ----------------------------------------------------------------------------------

def test_not_a_zip_and_a_damaged_zip(tmp_path, e2e_dir):
    (tmp_path / "e2e-dataset.zip").write_bytes(b"this is not a zip")
    with pytest.raises(UserError, match=r"e2e-dataset.zip is not a readable zip file"):
        load_examples("e2e", "dev", tmp_path)
    release = (e2e_dir / "e2e-dataset.zip").read_bytes()
    (tmp_path / "e2e-dataset.zip").write_bytes(release[:len(release) // 3])
    with pytest.raises(UserError, match=r"e2e-dataset.zip is not a readable zip file"):
        load_examples("e2e", "dev", tmp_path)


def test_missing_split(tmp_path):
    with pytest.raises(UserError, match=r"found neither devset.csv nor e2e-dataset.zip in"):
        load_examples("e2e", "dev", tmp_path)
    with zipfile.ZipFile(tmp_path / "e2e-dataset.zip", "w") as archive:
        archive.writestr("e2e-dataset/trainset.csv", "mr,ref\n")
    with pytest.raises(UserError, match=r"e2e-dataset.zip has no devset.csv"):
        load_examples("e2e", "dev", tmp_path)


@pytest.mark.parametrize("bad_row, message", [
    (["name[Aromi]", "Aromi.", "extra"], "has 3 fields instead of 2"),
    (["name[Aromi] eatType[pub]", "Aromi."], "not of the form slot[value]"),
    (["name[Aromi], stars[5]", "Aromi."], "unknown slot 'stars'"),
])
def test_malformed_row_names_file_and_row(tmp_path, bad_row, message):
    write_e2e_csv(tmp_path, [["name[Aromi]", "Aromi."], bad_row])
    with pytest.raises(UserError, match=r"row 3 of .*devset.csv") as error:
        load_examples("e2e", "dev", tmp_path)
    assert message in str(error.value)


def test_wrong_csv_header_and_encoding(tmp_path):
    (tmp_path / "devset.csv").write_text("MR\nname[Aromi]\n", encoding="utf-8")  # testset.csv: no references
    with pytest.raises(UserError, match="does not start with the header mr,ref"):
        load_examples("e2e", "dev", tmp_path)
    (tmp_path / "devset.csv").write_bytes("mr,ref\nname[Caf\u00e9],x\n".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8"):
        load_examples("e2e", "dev", tmp_path)
    (tmp_path / "devset.csv").write_text("mr,ref\n" + "x" * 200_000 + ",y\n")  # over csv's field limit
    with pytest.raises(UserError, match="is not a readable CSV file"):
        load_examples("e2e", "dev", tmp_path)
    write_e2e_csv(tmp_path, [])
    with pytest.raises(UserError, match="devset.csv has a header but no rows"):
        load_examples("e2e", "dev", tmp_path)


def test_webnlg_folder_mistakes(tmp_path):
    with pytest.raises(UserError, match="WebNLG is not downloaded automatically; point --data_dir"):
        load_examples("webnlg", "train")
    with pytest.raises(UserError, match="holds no WebNLG test split"):
        load_examples("webnlg", "test", tmp_path)
    (tmp_path / "dev" / "1triples").mkdir(parents=True)
    (tmp_path / "dev" / "1triples" / "broken.xml").write_text("<benchmark><entries>")
    with pytest.raises(UserError, match="broken.xml is not well-formed XML"):
        load_examples("webnlg", "dev", tmp_path)


def test_unknown_names():
    with pytest.raises(UserError, match="unknown dataset 'totto'; choose e2e, webnlg, dart, jsonl"):
        load_examples("totto", "train")
    with pytest.raises(UserError, match="unknown split 'valid'"):
        load_examples("e2e", "valid")
    with pytest.raises(UserError, match="unknown WebNLG subset"):
        category_subset([], "both")
