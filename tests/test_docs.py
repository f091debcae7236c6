"""README and docs/ link to each other by relative paths: every one names a file that exists, and an anchor a
heading of that page has."""
import importlib
import itertools
import re
from pathlib import Path

import pytest

from conftest import ROOT
from markdown import anchors, relative_links

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(link)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_a_heading_that_exist(page):
    assert broken_links(page) == []


def test_readme_links_every_docs_page():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(ROOT / "README.md")}
    assert [page.name for page in PAGES[1:] if page not in linked] == []


def test_a_missing_file_and_a_wrong_anchor_are_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n")
    page.write_text("# Title\n\n## A `sample.py` section\n\n[ok](#a-samplepy-section) [gone](missing.md) "
                    "[bad](#nowhere) [there](other.md#other) [not there](other.md#title) [web](https://example.com) "
                    "`[code](x.md)`\n\n    [indented](y.md)\n")
    assert relative_links(page) == ["#a-samplepy-section", "missing.md", "#nowhere", "other.md#other",
                                    "other.md#title"]
    assert broken_links(page) == ["missing.md", "#nowhere", "other.md#title"]


def equation_table_references() -> list[tuple[str, str]]:
    """(file, name) for every name README's equation table gives after a `file.py`: in its code column."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| the paper | the code |")
    references = []
    for row in itertools.takewhile(lambda line: line.startswith("|"), lines[start + 2:]):
        code = row.rsplit(" | ", 1)[1]
        for file, names in re.findall(r"`([\w/]+\.py)`:(.*?)(?=`[\w/]+\.py`:|$)", code):
            references += [(file, name) for name in re.findall(r"`([A-Za-z_][\w.]*)`", names)]
    return references


def test_every_name_in_the_equation_table_is_defined_in_the_file_it_names():
    references = equation_table_references()
    assert ("train.py", "objective") in references and ("prefix/tuning.py", "PrefixTuning.activations") in references
    missing = []
    for file, name in references:
        module = importlib.import_module(file.removesuffix(".py").replace("/", "."))
        owner, *attributes = name.split(".")
        target = module.__dict__.get(owner)
        for attribute in attributes:
            target = getattr(target, attribute, None)
        if target is None or getattr(target, "__module__", module.__name__) != module.__name__:
            missing.append(f"{file}: {name}")
    assert missing == []
