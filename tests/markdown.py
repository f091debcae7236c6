"""Reading the project's markdown pages: a section by its heading, the relative links and the anchors of a page."""
import re
from pathlib import Path

from conftest import ROOT

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def section(path: str, heading: str) -> str:
    """The text of the `## heading` section of a page, up to the next `## ` heading."""
    text = (ROOT / path).read_text(encoding="utf-8")
    return text[text.index(f"\n## {heading}\n"):].split("\n## ")[1]


def without_code_blocks(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return "\n".join(line for line in text.splitlines() if not line.startswith("    "))


def relative_links(page: Path) -> list[str]:
    """The link targets of a page that are paths (maybe with an #anchor), not URLs; inline code holds none."""
    prose = re.sub(r"`[^`\n]*`", "", without_code_blocks(page.read_text(encoding="utf-8")))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z]+:", target)]


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercased, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", without_code_blocks(page.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
