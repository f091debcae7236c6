"""DART (Nan et al., 2021), open-domain sets of (subject, property, object) triples: read a split of the v1.1.1
release, as JSON or as its WebNLG-style XML, and linearize each triple set as the paper's code does."""
import json
from pathlib import Path

from common import UserError
from data.example import Example
from data.webnlg import lex_place, xml_entries

RELEASE = "DART v1.1.1"
URL = "https://github.com/Yale-LILY/dart/tree/master/data/v1.1.1"
# The paper's Table 6 (ACL) for DART. The authors' repository gives no DART command; their train_e2e.py defaults,
# which --mode triples (their DART) would run with, differ in batch (10) and epochs (5).
TRAINING = dict(learning_rate=5e-5, batch_size=5, epochs=10, prefix_len=10)
LAYOUT = (f"point --data_dir at a folder with the {RELEASE} files dart-v1.1.1-full-{{train,dev,test}}.json "
          f"(or .xml), from {URL}")


def source_files(split: str, data_dir) -> list[Path]:
    """The split's file: dart-v1.1.1-full-{split}.json, else the .xml of the same name."""
    if data_dir is None:
        raise UserError(f"DART is not downloaded automatically; {LAYOUT}")
    for suffix in (".json", ".xml"):
        path = Path(data_dir) / f"dart-v1.1.1-full-{split}{suffix}"
        if path.is_file():
            return [path]
    raise UserError(f"{data_dir} holds no DART {split} split; {LAYOUT}")


def load(split: str, data_dir, for_training: bool = False) -> list[Example]:
    """One Example per triple set, in file order, with every text written for it.

    for_training changes nothing: the paper's code trains on every annotation, whatever its source.
    """
    [path] = source_files(split, data_dir)
    return _read_json(path) if path.suffix == ".json" else _read_xml(path)


def linearize(triples) -> str:
    """[("Mars Hill College", "JOINED", "1973"), ...] -> `Mars Hill College : joined : 1973 | ...`: each triple
    `subject : property : object` with the property lowercased, joined by ` | ` (the paper's code for DART)."""
    return " | ".join(f"{subject} : {prop.lower()} : {obj}" for subject, prop, obj in triples)


def _read_json(path: Path) -> list[Example]:
    """`[{"tripleset": [[s, p, o], ...], "annotations": [{"source": ..., "text": ...}, ...]}, ...]`."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"could not read {path} as JSON ({type(e).__name__}); replace it with the file from the "
                        f"{RELEASE} release") from None
    if not isinstance(records, list):
        raise UserError(f"{path} is not a JSON list of triple sets; replace it with the file from the {RELEASE} "
                        f"release")
    return [_json_example(record, n, path) for n, record in enumerate(records, start=1)]


def _json_example(record, number: int, path: Path) -> Example:
    where = f"triple set {number} of {path}"
    triples = record.get("tripleset") if isinstance(record, dict) else None
    annotations = record.get("annotations") if isinstance(record, dict) else None
    if not (isinstance(triples, list) and triples and all(
            isinstance(t, list) and len(t) == 3 and all(isinstance(v, str) for v in t) for t in triples)):
        raise UserError(f"{where} has no \"tripleset\" of [subject, property, object] strings; replace the file "
                        f"with the one from the {RELEASE} release")
    if not (isinstance(annotations, list) and all(
            isinstance(a, dict) and isinstance(a.get("text"), str) for a in annotations)):
        raise UserError(f"{where} has no \"annotations\" list of {{\"text\": ...}}; replace the file with the one "
                        f"from the {RELEASE} release")
    return Example(linearize(triples), tuple(a["text"] for a in annotations),
                   places=tuple(f"annotation {n} of {where}" for n in range(1, len(annotations) + 1)))


def _read_xml(path: Path) -> list[Example]:
    """The release's XML: WebNLG's layout, a <lex> per text (its comment holds the source)."""
    examples = []
    for entry, triples in xml_entries(path, RELEASE):
        lexes = entry.findall("lex")
        examples.append(Example(linearize(triples), tuple(lex.text or "" for lex in lexes),
                                places=tuple(lex_place(n, entry, path) for n in range(1, len(lexes) + 1))))
    return examples
