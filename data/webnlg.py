"""WebNLG 2017 challenge (sets of DBpedia triples): read a split's XML files and linearize each entry's triples
as the paper's code does."""
import xml.etree.ElementTree as ET
from pathlib import Path

from common import UserError
from data.example import Example

# The 10 training categories; the test split adds 5 unseen ones (Athlete, Artist, CelestialBody,
# MeanOfTransportation, Politician), which the paper scores separately.
SEEN_CATEGORIES = frozenset({"Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument",
                             "SportsTeam", "University", "WrittenWork"})
# The paper's Table 6, which the authors' README command also runs (--preseqlen 5)
TRAINING = dict(learning_rate=5e-5, batch_size=5, epochs=5, prefix_len=5)
LAYOUT = ("point --data_dir at a WebNLG 2017 folder with train/ and dev/ (1triples/ ... 7triples/ of XML files) "
          "and test/testdata_with_lex.xml")


def source_files(split: str, data_dir) -> list[Path]:
    """The split's XML files: every {split}/*triples/*.xml for train and dev, test/testdata_with_lex.xml for test."""
    if data_dir is None:
        raise UserError(f"WebNLG is not downloaded automatically; {LAYOUT}")
    folder = Path(data_dir)
    files = [folder / "test" / "testdata_with_lex.xml"] if split == "test" else \
        sorted((folder / split).glob("*triples/*.xml"))
    if not files or not all(f.is_file() for f in files):
        raise UserError(f"{folder} holds no WebNLG {split} split; {LAYOUT}")
    return files


def load(split: str, data_dir, for_training: bool = False) -> list[Example]:
    """One Example per entry: its modified triples `s : p : o` joined by ` | `, its category, and its references.

    Every lexicalisation is a reference for evaluation. The 2017 files mark each one comment="good" or "toFix"
    (train 18,025 good / 77 toFix, dev 2,258 / 10, test all good); the paper's code trains on the good ones only,
    so for_training keeps only those (an entry whose lexicalisations are all toFix then gives no training text).
    """
    return [example for path in source_files(split, data_dir) for example in _read(path, for_training)]


def category_subset(examples: list[Example], subset: str) -> list[Example]:
    """The examples to score: "seen" (training categories), "unseen" (the others) or "all"."""
    if subset not in ("seen", "unseen", "all"):
        raise UserError(f"unknown WebNLG subset {subset!r}; choose seen, unseen or all")
    return [ex for ex in examples if subset == "all" or (ex.category in SEEN_CATEGORIES) == (subset == "seen")]


def _read(path: Path, for_training: bool) -> list[Example]:
    examples = []
    for entry, triples in xml_entries(path, "WebNLG 2017"):
        kept = [(n, lex) for n, lex in enumerate(entry.findall("lex"), start=1)
                if not for_training or lex.get("comment", "good") == "good"]
        examples.append(Example(" | ".join(" : ".join(triple) for triple in triples),
                                tuple(lex.text or "" for _, lex in kept), entry.get("category"),
                                tuple(lex_place(n, entry, path) for n, _ in kept)))
    return examples


def xml_entries(path: Path, release: str) -> list[tuple[ET.Element, list[tuple[str, str, str]]]]:
    """Every <entry> of a WebNLG-style XML file (WebNLG's, DART's) with its modified triples as (subject,
    property, object), values as in the file; `release` names where a good copy of the file comes from."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise UserError(f"{path} is not well-formed XML ({e}); replace it with the file from the {release} "
                        f"release") from None
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None
    return [(entry, [_triple(t.text or "", path, entry, release) for t in entry.iter("mtriple")])
            for entry in root.iter("entry")]


def lex_place(number: int, entry: ET.Element, path: Path) -> str:
    return f"lexicalisation {number} of entry {entry.get('eid')} in {path}"


def _triple(text: str, path: Path, entry: ET.Element, release: str) -> tuple[str, str, str]:
    """`Aarhus_Airport | cityServed | Aarhus` -> ("Aarhus_Airport", "cityServed", "Aarhus")."""
    parts = text.split(" | ")
    if len(parts) != 3:
        raise UserError(f"entry {entry.get('eid')} of {path} has the triple {text!r}, which is not "
                        f"'subject | property | object'; replace the file with the one from the {release} release")
    return tuple(parts)
