"""data/jsonl.py and --dataset jsonl: a user's own input -> output pairs train and decode through train.py and
sample.py (in-process, on the toy task in examples/jsonl-toy), every reference is used, every mistake in the files
is one sentence naming the file and line with nothing trained or written, and the long-row rule."""
import json
import shutil

import pytest

from common import UserError, cache_dir
from conftest import ROOT
from data import load_examples, tokenized_split

TOY = ROOT / "examples" / "jsonl-toy"
GOOD = '{"input": "city : Oslo | sky : snow | high : 2", "output": "Snowy in Oslo, with a high of 2."}'


def call(main, argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a script's main(argv), run in this process."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def train(tiny_gpt2, data_dir, out_dir, capsys, *extra):
    from train import main
    return call(main, ["--init_from", tiny_gpt2, "--dataset", "jsonl", "--data_dir", data_dir, "--out_dir", out_dir,
                       "--batch_size", "6", "--learning_rate", "1e-2", "--eval_interval", "1000", *extra], capsys)


def sample(out_dir, capsys, *extra):
    from sample import main
    return call(main, ["--out_dir", out_dir, "--max_new_tokens", "12", "--num_beams", "2", "--no-coco", *extra],
                capsys)


@pytest.fixture(scope="module")
def toy_run(tiny_gpt2, tmp_path_factory):
    """A prefix trained 5 epochs on the toy task (55 iterations), on a copy of the folder so its caches stay out of
    the repository; (data folder, run folder, train.py's output)."""
    data = tmp_path_factory.mktemp("toy") / "toy"
    shutil.copytree(TOY, data)
    run = tmp_path_factory.mktemp("run")
    import contextlib
    import io
    from train import main
    out = io.StringIO()  # a module fixture has no capsys
    with contextlib.redirect_stdout(out):
        main(["--init_from", str(tiny_gpt2), "--dataset", "jsonl", "--data_dir", str(data), "--out_dir", str(run),
              "--batch_size", "6", "--learning_rate", "1e-2", "--eval_interval", "11"])
    return data, run, out.getvalue()


def test_the_toy_task_is_learned_well_below_its_start(toy_run):
    data, run, out = toy_run
    losses = [r["val_loss"] for r in map(json.loads, open(run / "log.jsonl")) if "val_loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] - 1.0, losses  # 11.13 -> 9.26 per token here
    assert json.loads((run / "config.json").read_text())["args"]["dataset"] == "jsonl"


def test_every_reference_is_a_training_row_and_every_line_an_example(toy_run, tokenizer):
    data, run, out = toy_run
    lines = [json.loads(line) for line in (TOY / "train.jsonl").read_text().splitlines()]
    outputs = [o for line in lines for o in ([line["output"]] if isinstance(line["output"], str) else line["output"])]
    assert len(lines) == 36 and len(outputs) > len(lines)  # some lines have two or three references
    assert f"train: {len(outputs)} sequences" in out
    examples = load_examples("jsonl", "train", data)
    assert [ex.table for ex in examples] == [line["input"] for line in lines]
    assert [r for ex in examples for r in ex.references] == outputs
    first = tokenized_split("jsonl", "train", tokenizer, data)[0].tolist()
    assert tokenizer.decode(first) == f" {lines[0]['input']} <|endoftext|> {outputs[0]} <|endoftext|>"


def test_sample_decodes_and_scores_the_test_split_against_all_references(toy_run, capsys):
    data, run, _ = toy_run
    code, out, err = sample(run, capsys, "--split", "test")
    assert code == 0, err
    folder = run / "eval" / "jsonl-test"
    summary = json.loads((folder / "scores.json").read_text())
    assert summary["tables"] == 8 and set(summary["scores"]) == {"BLEU", "NIST"}
    examples = load_examples("jsonl", "test", data)
    groups = (folder / "references.txt").read_text().split("\n\n")[:-1]
    assert [group.split("\n") for group in groups] == [list(ex.references) for ex in examples]
    # the last reference of each table, given as the texts, scores 100: every reference is one to match
    last = run / "last.txt"
    last.write_text("".join(ex.references[-1] + "\n" for ex in examples))
    assert any(len(ex.references) > 1 for ex in examples)
    code, out, err = sample(run, capsys, "--split", "test", "--hypotheses", last)
    assert code == 0, err
    assert json.loads((folder / "scores.json").read_text())["scores"]["BLEU"] == pytest.approx(100)


def test_sample_starts_from_an_input_and_from_a_file(toy_run, capsys, tmp_path):
    _, run, _ = toy_run
    code, out, err = sample(run, capsys, "--start", "city : Oslo | sky : snow | high : 2")
    assert code == 0, err
    assert out.startswith("city : Oslo | sky : snow | high : 2\n  -> ")
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("city : Rome | sky : sun | high : 30\ncity : Lima | sky : fog | high : 9\n")
    code, out, err = sample(run, capsys, "--start", f"FILE:{inputs}", "--output", tmp_path / "texts.txt")
    assert code == 0, err
    assert len((tmp_path / "texts.txt").read_text().splitlines()) == 2


# --- one sentence naming the file and line, exit 2, nothing trained and nothing written ---------------------------

BAD_LINES = {
    "not JSON": ('{"input": "a", "output": "b"', "is not JSON"),
    "not an object": ('["a", "b"]', "is a JSON list, not an object"),
    "no input": ('{"output": "b"}', 'has no "input"'),
    "input not a string": ('{"input": 3, "output": "b"}', 'has an "input" that is not a non-empty string'),
    "no output": ('{"input": "a"}', 'has no "output"'),
    "empty output": ('{"input": "a", "output": ""}', 'has an "output" that is neither'),
    "empty list of outputs": ('{"input": "a", "output": []}', 'has an "output" that is neither'),
    "output of the wrong type": ('{"input": "a", "output": {"text": "b"}}', 'has an "output" that is neither'),
    "a list holding a non-string": ('{"input": "a", "output": ["b", 7]}', 'has an "output" that is neither'),
    "blank line in the middle": ("", "is blank"),
}


def write_task(folder, train_lines, dev_lines=(GOOD,)):
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("train", train_lines), ("dev", dev_lines)):
        if lines is not None:
            (folder / f"{name}.jsonl").write_bytes(b"".join(
                (line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return folder


def assert_refused(result, message, data, out_dir):
    code, out, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not out_dir.exists()  # no run folder, so nothing trained and nothing written
    assert not list(data.glob("*.npz")) and not list(cache_dir("data", "jsonl").glob("*"))


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_line_is_one_sentence_naming_file_and_line(case, tiny_gpt2, tmp_path, capsys):
    line, message = BAD_LINES[case]
    data = write_task(tmp_path / "task", [GOOD, line, GOOD])
    result = train(tiny_gpt2, data, tmp_path / "run", capsys)
    assert_refused(result, f"line 2 of {data / 'train.jsonl'} {message}", data, tmp_path / "run")


def test_a_file_that_is_not_utf8_names_its_line(tiny_gpt2, tmp_path, capsys):
    data = write_task(tmp_path / "task", [GOOD, GOOD, '{"input": "caf\xe9", "output": "b"}'.encode("latin-1")])
    result = train(tiny_gpt2, data, tmp_path / "run", capsys)
    assert_refused(result, f"line 3 of {data / 'train.jsonl'} is not UTF-8 text", data, tmp_path / "run")


@pytest.mark.parametrize("missing", ["train", "dev"])
def test_a_missing_split_file_is_named(missing, tiny_gpt2, tmp_path, capsys):
    data = write_task(tmp_path / "task", None if missing == "train" else [GOOD], None if missing == "dev" else [GOOD])
    result = train(tiny_gpt2, data, tmp_path / "run", capsys)
    assert_refused(result, f"found no {missing}.jsonl in {data}", data, tmp_path / "run")


def test_an_empty_split_is_refused(tiny_gpt2, tmp_path, capsys):
    data = write_task(tmp_path / "task", [GOOD], [])
    result = train(tiny_gpt2, data, tmp_path / "run", capsys)
    assert_refused(result, f"{data / 'dev.jsonl'} holds no examples", data, tmp_path / "run")


def test_a_bad_test_file_is_refused_by_sample_and_writes_no_evaluation(toy_run, tmp_path, capsys):
    _, run, _ = toy_run
    data = write_task(tmp_path / "task", [GOOD], [GOOD])
    (data / "test.jsonl").write_text(GOOD + "\n{not json}\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, out, err = sample(run, capsys, "--split", "test", "--data_dir", data)
    assert code == 2 and err.count("\n") == 1 and f"line 2 of {data / 'test.jsonl'} is not JSON" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_trailing_blank_lines_and_extra_keys_are_accepted(tmp_path):
    data = write_task(tmp_path / "task", [GOOD[:-1] + ', "id": 7}', "", "  "])
    assert len(load_examples("jsonl", "train", data)) == 1


# --- the long-row rule (every dataset) ---------------------------------------------------------------------------

def long_task(folder):
    long = json.dumps({"input": "city : Oslo", "output": "snow " * 300})
    return write_task(folder, [GOOD, GOOD, long, GOOD], [GOOD, long])


def test_a_row_longer_than_the_positions_is_refused_with_its_line_and_length(tiny_gpt2, tmp_path, capsys, tokenizer):
    data = long_task(tmp_path / "task")
    length = len(tokenized_split("jsonl", "train", tokenizer, data)[2])
    for cache in data.glob("*.npz"):
        cache.unlink()
    code, _, err = train(tiny_gpt2, data, tmp_path / "run", capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"line 3 of {data / 'train.jsonl'} makes a training row of {length} tokens" in err
    assert f"with the prefix of 10 needs {length + 9} of the model's 256 positions" in err  # it reads all but one
    assert "--skip_long_rows to leave out the 1 row(s) of the train split" in err
    assert not (tmp_path / "run").exists()


def test_skip_long_rows_leaves_them_out_and_counts_them(tiny_gpt2, tmp_path, capsys):
    data = long_task(tmp_path / "task")
    code, out, err = train(tiny_gpt2, data, tmp_path / "run", capsys, "--skip_long_rows", "--max_iters", "1")
    assert code == 0, err
    assert "train: 3 sequences" in out and "; 1 longer ones left out (--skip_long_rows)" in out
    assert "val:   1 sequences" in out


def test_the_long_row_rule_names_the_row_in_every_dataset(tokenizer, tmp_path):
    from data import rows_that_fit
    from test_data import write_e2e_csv
    folder = write_e2e_csv(tmp_path / "e2e", [["name[Aromi], eatType[pub]", "Aromi is a pub."],
                                              ["name[Aromi], eatType[pub]", "A pub " * 100]])
    rows = tokenized_split("e2e", "dev", tokenizer, folder)
    with pytest.raises(UserError, match=r"row 3 of .*devset.csv makes a training row of \d+ tokens"):
        rows_that_fit(rows, 10, 64, False, "e2e", "dev", folder)
    assert len(rows_that_fit(rows, 10, 64, True, "e2e", "dev", folder)) == 1
    with pytest.raises(UserError, match="no row of the e2e dev split fits"):
        rows_that_fit(rows, 60, 64, True, "e2e", "dev", folder)


def test_the_cache_follows_the_contents_not_the_name_or_the_date(tokenizer, tmp_path):
    import os
    data = write_task(tmp_path / "task", [GOOD])
    first = tokenized_split("jsonl", "train", tokenizer, data)
    stat = (data / "train.jsonl").stat()
    (data / "train.jsonl").write_text(GOOD.replace("Oslo", "Bern") + "\n")  # same size, then the same date
    os.utime(data / "train.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "Bern" in tokenizer.decode(tokenized_split("jsonl", "train", tokenizer, data)[0].tolist())
    assert len(list(data.glob("*.npz"))) == 2 and len(first) == 1
