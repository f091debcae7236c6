"""E2E NLG Challenge (restaurant meaning representations): read a split's CSV and linearize each MR as the
paper's code does."""
import csv
import io
import re
import zipfile
import zlib
from itertools import groupby
from pathlib import Path

from common import UserError, cache_dir, download
from data.example import Example

URL = "https://github.com/tuetschek/e2e-dataset/releases/download/v1.0.0/e2e-dataset.zip"
ZIP_NAME = "e2e-dataset.zip"
SPLIT_FILES = {"train": "trainset.csv", "dev": "devset.csv", "test": "testset_w_refs.csv"}
# The paper's preprocessed MRs rename three slots and keep the other five.
SLOT_NAMES = {"name": "name", "eatType": "Type", "food": "food", "priceRange": "price",
              "customer rating": "customer rating", "area": "area", "familyFriendly": "family friendly",
              "near": "near"}
# The paper's Table 6 (lr, batch, epochs; README's command passes its P = 5) and the authors' train_e2e.py P = 10
TRAINING = dict(learning_rate=8e-5, batch_size=10, epochs=5, prefix_len=10)
SLOT = re.compile(r"(?:^|, )([^\[\],]+)\[([^\[\]]*)\]")  # "slot[value]" at the start or after ", "


def source_files(split: str, data_dir=None) -> list[Path]:
    """The one file the split is read from: its CSV in data_dir (or data_dir/e2e-dataset/), else the release zip,
    which is downloaded into the user cache when no data_dir is given."""
    if data_dir is None:
        hint = "without a network, pass --data_dir pointing at a folder that holds e2e-dataset.zip or its CSV files"
        return [download(URL, cache_dir("data", "e2e") / ZIP_NAME, "the E2E dataset", hint)]
    folder, name = Path(data_dir), SPLIT_FILES[split]
    for path in (folder / name, folder / "e2e-dataset" / name, folder / ZIP_NAME):
        if path.is_file():
            return [path]
    raise UserError(f"found neither {name} nor {ZIP_NAME} in {folder}; point --data_dir at the folder that holds "
                    f"the E2E release zip or its extracted CSV files")


def load(split: str, data_dir=None, for_training: bool = False) -> list[Example]:
    """The split's Examples, one per run of consecutive rows with the same MR, references in file order.

    for_training changes nothing here: every E2E reference is also a training text.
    """
    return _examples(*read_rows(split, data_dir))


def read_rows(split: str, data_dir=None) -> tuple[list[tuple[int, str, str]], str]:
    """The split's CSV rows as (row number as a spreadsheet shows it, mr, ref), and where they were read."""
    [path] = source_files(split, data_dir)
    name = SPLIT_FILES[split]
    try:
        if path.suffix != ".zip":
            with open(path, encoding="utf-8", newline="") as f:
                return _rows(f, str(path)), str(path)
        with zipfile.ZipFile(path) as archive:
            member = next((m for m in archive.namelist() if Path(m).name == name), None)  # e2e-dataset/<name>
            if member is None:
                raise UserError(f"{path} has no {name}; replace it with the official {ZIP_NAME} (release v1.0.0)")
            with archive.open(member) as raw:
                where = f"{member} in {path}"
                return _rows(io.TextIOWrapper(raw, encoding="utf-8", newline=""), where), where
    except (zipfile.BadZipFile, zlib.error, EOFError):  # the ways a damaged zip shows itself
        raise UserError(f"{path} is not a readable zip file; delete it (it is downloaded again when --data_dir is "
                        f"not given) or replace it with the official {ZIP_NAME}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; replace it with the file from the official E2E release") from None
    except csv.Error as e:
        raise UserError(f"{path} is not a readable CSV file ({e}); replace it with the file from the official E2E "
                        f"release") from None
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None


def _rows(lines, where: str) -> list[tuple[int, str, str]]:
    """CSV rows `mr,ref`, numbered as a spreadsheet shows them: the header is row 1."""
    reader = csv.reader(lines)  # the csv module, because two references contain quoted line breaks
    if next(reader, None) != ["mr", "ref"]:
        raise UserError(f"{where} does not start with the header mr,ref; give an E2E file with references "
                        f"(trainset.csv, devset.csv or testset_w_refs.csv)")
    rows = []
    for row, fields in enumerate(reader, start=2):
        if len(fields) != 2:
            raise UserError(f"row {row} of {where} has {len(fields)} fields instead of 2 (mr, ref); "
                            f"fix the row or replace the file with the official one")
        rows.append((row, *fields))
    if not rows:
        raise UserError(f"{where} has a header but no rows; replace it with the file from the official E2E release")
    return rows


def _examples(rows: list[tuple[int, str, str]], where: str) -> list[Example]:
    examples = []
    for mr, group in groupby(rows, key=lambda r: r[1]):
        group = list(group)
        try:
            table = linearize(mr)
        except ValueError as e:
            raise UserError(f"row {group[0][0]} of {where} {e}; fix the row or replace the file "
                            f"with the official one") from None
        examples.append(Example(table, tuple(_one_line(ref) for _, _, ref in group),
                                places=tuple(f"row {row} of {where}" for row, _, _ in group)))
    return examples


def linearize(mr: str) -> str:
    """`name[The Vaults], eatType[pub], priceRange[more than £30]` -> `name : The Vaults | Type : pub | price :
    more than £ 30`: slots in the MR's order, renamed as in the paper's data; ValueError for a malformed MR."""
    pairs = SLOT.findall(mr)
    if not pairs or ", ".join(f"{slot}[{value}]" for slot, value in pairs) != mr:
        raise ValueError(f"has the MR {mr!r}, which is not of the form slot[value], slot[value], ...")
    for slot, _ in pairs:
        if slot not in SLOT_NAMES:
            raise ValueError(f"has the unknown slot {slot!r} (known: {', '.join(SLOT_NAMES)})")
    return " | ".join(f"{SLOT_NAMES[slot]} : {_spaced_price(value) if slot == 'priceRange' else value}"
                      for slot, value in pairs)


def _spaced_price(value: str) -> str:
    # The release's prices are cheap, moderate, high, "less than £20", "£20-25" and "more than £30"; the paper's
    # data was tokenized, which split £ and the range dash off the numbers: "£20-25" -> "£ 20 - 25".
    return value.replace("£", "£ ").replace("-", " - ")


def _one_line(ref: str) -> str:
    # Two training references break a line inside the text ("...The Bakers.\r\n  This coffee shop..."):
    # the break and the spaces around it become one space.
    return re.sub(r"\s*\n\s*", " ", ref)
