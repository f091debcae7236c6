"""tests/fixtures: what a fresh clone tests on without ../shared. They are verbatim excerpts of the full data, and
the data tests run on them offline, skipping only what needs the full datasets."""
import csv
import io
import os
import re
import subprocess
import sys
import zipfile

import pytest

from conftest import FIXTURES, ROOT


def csv_records(text: str) -> list[str]:
    """The raw text of each CSV record (a quoted field may hold a line break), line ends included."""
    records, lines = [], []

    def read():
        for line in io.StringIO(text, newline=""):
            lines.append(line)
            yield line
    for _ in csv.reader(read()):
        records.append("".join(lines))
        lines.clear()
    return records


@pytest.mark.full_data
def test_the_fixtures_are_excerpts_of_the_full_data(shared):
    for name in ("encoder.json", "vocab.bpe"):
        assert (FIXTURES / "gpt2" / name).read_bytes() == (shared / "gpt2" / name).read_bytes()
    with zipfile.ZipFile(shared / "data" / "e2e" / "e2e-dataset.zip") as release:
        for path in sorted((FIXTURES / "e2e" / "e2e-dataset").iterdir()):
            ours = csv_records(path.read_bytes().decode("utf-8"))
            theirs = csv_records(release.read(f"e2e-dataset/{path.name}").decode("utf-8"))
            assert ours[0] == theirs[0] and len(ours) > 20
            rows = iter(theirs)
            assert all(row in rows for row in ours[1:]), path  # whole rows of the release, in its order
    entry = re.compile(r"<entry .*?</entry>", re.S)
    files = sorted((FIXTURES / "webnlg").rglob("*.xml"))
    assert {f.parent.name for f in files} >= {"test", *(f"{n}triples" for n in range(1, 8))}
    for path in files:
        ours = path.read_text(encoding="utf-8")
        theirs = (shared / "data" / "webnlg" / path.relative_to(FIXTURES / "webnlg")).read_text(encoding="utf-8")
        entries = iter(entry.findall(theirs))
        assert entry.findall(ours) and all(e in entries for e in entry.findall(ours)), path
        assert ours.startswith(theirs[:theirs.index("<entry ")])  # the release's header


def test_without_shared_the_data_tests_run_on_the_fixtures_offline(tmp_path):
    """A fresh clone's run of test_data.py, and of the tokenizer test that loads tiktoken's gpt2 (from the fixture's
    files, as TIKTOKEN_CACHE_DIR is unset): everything passes but what is marked full_data."""
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_CACHE_DIR"}
    result = subprocess.run([sys.executable, "-m", "pytest", "--without-shared", "-v", "-rs", "-p", "no:cacheprovider",
                             f"--basetemp={tmp_path}", "tests/test_data.py",
                             "tests/test_loading.py::test_tokenizer_from_checkpoint_files_equals_tiktoken"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    for test in ("test_e2e_linearization_follows_the_papers_data", "test_e2e_multiline_references_become_one_line",
                 "test_e2e_zip_and_extracted_csvs_agree", "test_webnlg_linearization",
                 "test_tokenizer_from_checkpoint_files_equals_tiktoken"):
        assert f"::{test} PASSED" in result.stdout, test
    assert "::test_e2e_train_sequences SKIPPED" in result.stdout  # it counts the full train split
    skips = re.findall(r"^SKIPPED \[\d+\] .*$", result.stdout, re.M)
    assert skips and all("needs the full datasets: put a folder shared/ beside the repository" in s for s in skips)
