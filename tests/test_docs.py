"""README and docs/ link to each other by relative paths: every one names a file that exists, and an anchor a
heading of that page has."""
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
