"""The safetensors format, read and written without the extra package.

A file is: 8 bytes (little-endian u64) giving the header's length, a JSON header mapping each name to
{dtype, shape, data_offsets}, then the raw little-endian bytes. Nothing in it can run code, which is why
the hub prefers it to pickled .bin files.
"""
import json
import struct
from pathlib import Path

import torch

from common.errors import UserError
from common.files import atomic_path

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def load_file(path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file; a truncated or malformed file is a UserError."""
    path = Path(path)
    try:
        buffer = bytearray(path.read_bytes())  # writable, so torch can view it without copying
    except OSError as e:
        raise UserError(f"could not read {path} ({e.strerror})") from None
    header, data_start = _header(path, buffer)
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if data_start + end > len(buffer):
            raise UserError(f"{path} is truncated ({len(buffer)} bytes, its header needs {data_start + end}); "
                            f"delete it and fetch it again")
        raw = torch.frombuffer(buffer, dtype=torch.uint8, count=end - begin, offset=data_start + begin) \
            if end > begin else torch.empty(0, dtype=torch.uint8)
        if info["dtype"] not in DTYPES:
            raise UserError(f"{path} holds {name} as {info['dtype']}, which this reader does not know")
        tensors[name] = raw.view(DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def load_metadata(path) -> dict[str, str]:
    """The free-form string metadata stored in a .safetensors header."""
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        return _header(Path(path), head + f.read(min(length, 100_000_000)))[0].get("__metadata__", {})


def _header(path: Path, buffer) -> tuple[dict, int]:
    """The parsed JSON header and the offset where the tensor bytes start."""
    try:
        (header_len,) = struct.unpack("<Q", buffer[:8])
        return json.loads(buffer[8:8 + header_len]), 8 + header_len
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not a safetensors file (or is truncated); delete it and fetch it again") from None


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
