"""The safetensors format, read and written without the extra package.

A file is: 8 bytes (little-endian u64) giving the header's length N, N bytes of UTF-8 JSON, then the data. The
header maps each tensor's name to exactly {dtype, shape, data_offsets}, plus an optional "__metadata__" of string
values; offsets count from the start of the data, and the tensors' byte ranges tile the data exactly, in order of
their offsets, without gaps or overlaps. Nothing in it can run code, which is why the hub prefers it to pickled
.bin files. The reader checks all of this, as the format's own implementation does, before it builds a tensor:
a damaged file is one sentence naming the file and the tensor, never a tensor made of the wrong bytes.
"""
import json
import math
import os
import struct
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch

from common.errors import UserError
from common.files import atomic_path

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
FIELDS = {"dtype", "shape", "data_offsets"}
MAX_HEADER = 100_000_000  # bytes; the official implementation's cap, so a damaged length cannot ask for gigabytes
METADATA = "__metadata__"
SLICE = 1 << 20  # bytes of rows read at a time into a matrix that is read transposed


def load_file(path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, checked against the format; a damaged file is a UserError."""
    return {name: read() for name, read in iter_file(path)}


def iter_file(path) -> Iterator[tuple[str, Callable[..., torch.Tensor]]]:
    """(name, read) for each tensor of a checked .safetensors file, in the file's order: read() reads the tensor
    straight into memory of its own (no copy of the file is made), read(transpose=True) a matrix's transpose, a
    slice of rows at a time. A caller reads only what it keeps, and never holds more than that."""
    path = Path(path)
    with _open(path) as f:
        header, _ = _read_header(path, f)
        data_start = f.tell()
        for name, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"]):
            yield name, partial(_read_tensor, path, f, data_start + info["data_offsets"][0], info)


def load_metadata(path) -> dict[str, str]:
    """The free-form string metadata of a .safetensors file, whose header is checked as load_file checks it."""
    path = Path(path)
    with _open(path) as f:
        return _read_header(path, f, with_metadata=True)[0].get(METADATA, {})


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None


def _read_header(path: Path, f, with_metadata=False) -> tuple[dict, int]:
    """The checked header (tensor name -> entry, and __metadata__ when asked for) and the data's size in bytes;
    leaves `f` at the start of the data."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise UserError(f"{path} is not a safetensors file (it has {len(head)} bytes); delete it and fetch it again")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > MAX_HEADER:
        raise UserError(f"{path} is not a safetensors file: its header claims {header_len:,} bytes, more than the "
                        f"format's limit of {MAX_HEADER:,}")
    if 8 + header_len > size:
        raise UserError(f"{path} is truncated ({size} bytes, its header alone needs {8 + header_len}); delete it "
                        f"and fetch it again")
    header = _parse(path, f.read(header_len))
    _check(path, header, data_size=size - 8 - header_len)
    metadata = header.pop(METADATA, None)
    if with_metadata and metadata is not None:
        header[METADATA] = metadata
    return header, size - 8 - header_len


def _parse(path: Path, raw: bytes) -> dict:
    """The header's JSON, which must be UTF-8 and an object without repeated names."""
    def no_repeats(pairs):
        names = [name for name, _ in pairs]
        if len(set(names)) < len(names):
            raise UserError(f"{path} is damaged: its header names {_show(_repeated(names))} twice")
        return dict(pairs)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_repeats)
    except UserError:
        raise
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep, an integer of 5000 digits
        raise UserError(f"{path} is not a safetensors file (or is damaged): its header is not UTF-8 JSON; "
                        f"delete it and fetch it again") from None
    if not isinstance(header, dict):
        raise UserError(f"{path} is damaged: its header is a JSON {type(header).__name__}, not an object mapping "
                        f"tensor names to their dtype, shape and data_offsets")
    return header


def _check(path: Path, header: dict, data_size: int) -> None:
    """The format's rules for a parsed header, each broken one a sentence naming the file and the tensor."""
    metadata = header.get(METADATA, {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise UserError(f"{path} is damaged: its {METADATA} is not an object of strings")
    entries = {name: info for name, info in header.items() if name != METADATA}
    for name, info in entries.items():
        problem = _entry_problem(info)
        if problem:
            raise UserError(f"{path} is damaged: its tensor {_show(name)} {problem}")
    end, previous = 0, None  # the tensors must tile the data: each begins where the one before it ends
    for name, info in sorted(entries.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        begin = info["data_offsets"][0]
        if begin != end:
            where = f"where {_show(previous)} ends" if previous is not None else "at the start of the data"
            relation = "overlaps the bytes of" if begin < end else "leaves a gap after"
            raise UserError(f"{path} is damaged: its tensor {_show(name)} begins at byte {begin} of the data, not "
                            f"{where} ({end}), so it {relation} another tensor")
        end, previous = info["data_offsets"][1], name
    if end > data_size:
        raise UserError(f"{path} is truncated ({data_size} bytes of data, its header needs {end}); delete it and "
                        f"fetch it again")
    if end < data_size:
        raise UserError(f"{path} is damaged: {data_size - end} bytes follow the last tensor's data, which its "
                        f"header does not describe")


def _entry_problem(info) -> str | None:
    """What is wrong with one tensor's header entry, as the end of a sentence, or None."""
    if not isinstance(info, dict) or info.keys() != FIELDS:
        return "is not described by exactly dtype, shape and data_offsets"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not _naturals(shape):
        return f"has shape {_show(shape)}, not a list of non-negative integers"
    if not (_naturals(offsets) and len(offsets) == 2):
        return f"has data_offsets {_show(offsets)}, not two non-negative integers"
    if offsets[0] > offsets[1]:
        return f"has data_offsets that end before they begin ({offsets[0]} > {offsets[1]})"
    if not isinstance(dtype, str) or dtype not in DTYPES:
        return f"is stored as {_show(dtype, quote=False)}, which this reader does not know"
    needed = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != needed:
        return f"has {offsets[1] - offsets[0]} bytes, but {dtype} of shape {shape} takes {needed}"
    return None


def _read_tensor(path: Path, f, offset: int, info: dict, transpose: bool = False) -> torch.Tensor:
    """The tensor whose bytes start at `offset` of the file; with `transpose`, a matrix as its transpose, read in
    slices of rows into one small buffer (a matrix read whole, then transposed, would be held twice)."""
    dtype, shape = DTYPES[info["dtype"]], info["shape"]
    f.seek(offset)
    if not (transpose and len(shape) == 2):
        return _fill(path, f, torch.empty(shape, dtype=dtype))
    rows, cols = shape
    tensor = torch.empty(cols, rows, dtype=dtype)
    step = max(1, SLICE // max(1, cols * dtype.itemsize))
    buffer = torch.empty(min(step, rows), cols, dtype=dtype)
    for first in range(0, rows, step):
        part = _fill(path, f, buffer[:min(step, rows - first)])
        tensor[:, first:first + part.size(0)] = part.t()
    return tensor


def _fill(path: Path, f, tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (contiguous) with the next bytes of `f`."""
    size = tensor.numel() * tensor.element_size()
    if size and f.readinto(tensor.view(-1).view(torch.uint8).numpy()) != size:
        raise UserError(f"{path} changed while it was read; read it again when nothing is writing it")
    return tensor


def _naturals(value) -> bool:
    return isinstance(value, list) and all(type(x) is int and x >= 0 for x in value)


def _repeated(names: list) -> str:
    seen = set()
    return next(name for name in names if name in seen or seen.add(name))


def _show(value, quote=True, limit=60) -> str:
    """A header value in a message: its JSON, or the start of it when a damaged header makes it long."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(text) if isinstance(value, str) and quote else text


def save_file(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Write tensors as .safetensors, atomically."""
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
        blob = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header so the data starts 8-aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for blob in blobs:
            f.write(blob)
