"""A user's own task: input -> output pairs, one JSON object per line of DIR/train.jsonl, dev.jsonl and test.jsonl.

    {"input": "city : Oslo | sky : snow", "output": "Snow in Oslo."}
    {"input": "city : Rome | sky : sun", "output": ["Sun in Rome.", "Rome is sunny."]}

"input" is the table, document or prompt as the user writes it; "output" is its text, or a list of all its
references. Other keys are ignored. test.jsonl is optional.
"""
import json
from pathlib import Path

from common import UserError
from data.example import Example

# A starting point for a new task: the defaults of the authors' train_e2e.py
TRAINING = dict(learning_rate=5e-5, batch_size=10, epochs=5, prefix_len=10)
LAYOUT = ('a JSONL task is a folder with train.jsonl and dev.jsonl (test.jsonl optional), one {"input": "...", '
          '"output": "..." or ["...", ...]} per line')


def source_files(split: str, data_dir) -> list[Path]:
    """The split's one file, DIR/{split}.jsonl."""
    if data_dir is None:
        raise UserError(f"--dataset jsonl needs --data_dir; {LAYOUT}")
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"found no {path.name} in {data_dir}; {LAYOUT}")
    return [path]


def load(split: str, data_dir, for_training: bool = False) -> list[Example]:
    """One Example per line, its input verbatim as the table and every output as a reference.

    for_training changes nothing: every reference is also a training text.
    """
    [path] = source_files(split, data_dir)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None
    while lines and not lines[-1].strip():  # blank lines at the end are harmless; inside they are a mistake
        lines.pop()
    examples = [_example(raw, number, path) for number, raw in enumerate(lines, start=1)]
    if not examples:
        raise UserError(f"{path} holds no examples; {LAYOUT}")
    return examples


def _example(raw: bytes, number: int, path: Path) -> Example:
    where = f"line {number} of {path}"
    try:
        text = raw.decode("utf-8-sig")  # an editor's byte-order mark is not part of the JSON
    except UnicodeDecodeError:
        raise UserError(f"{where} is not UTF-8 text; save the file as UTF-8") from None
    if not text.strip():
        raise UserError(f"{where} is blank; give one example on every line, or remove the line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not JSON ({e.msg} at column {e.colno}); {LAYOUT}") from None
    if not isinstance(record, dict):
        raise UserError(f"{where} is a JSON {type(record).__name__}, not an object; {LAYOUT}")
    source = record.get("input")
    if not isinstance(source, str) or not source.strip():
        problem = "has no \"input\"" if "input" not in record else "has an \"input\" that is not a non-empty string"
        raise UserError(f"{where} {problem}; {LAYOUT}")
    output = record.get("output")
    outputs = [output] if isinstance(output, str) else output
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) and o.strip() for o in outputs):
        problem = "has no \"output\"" if "output" not in record else \
            "has an \"output\" that is neither a non-empty string nor a non-empty list of non-empty strings"
        raise UserError(f"{where} {problem}; {LAYOUT}")
    places = (where,) if len(outputs) == 1 else tuple(f"output {n} on {where}" for n in range(1, len(outputs) + 1))
    return Example(source, tuple(outputs), places=places)
