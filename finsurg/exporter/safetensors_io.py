"""Read safetensors headers lazily and write safetensors files as a stream of byte chunks.

Nothing here builds a model or holds a whole checkpoint: tensors move as byte ranges, so an
export needs memory for one chunk, not one model.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from finsurg.errors import FinsurgError

CHUNK = 16 * 1024 * 1024
MAX_HEADER = 100 * 1024 * 1024
TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES = {dtype: code for code, dtype in TORCH_DTYPES.items()}
FLOAT_CODES = {"F64", "F32", "F16", "BF16"}


def itemsize(code: str) -> int:
    return TORCH_DTYPES[code].itemsize


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class SafetensorsFile:
    """The parsed, checked header of one .safetensors file; data stays on disk."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                prefix = handle.read(8)
                if len(prefix) < 8:
                    raise ValueError("file shorter than its 8-byte header length")
                (length,) = struct.unpack("<Q", prefix)
                if length > min(MAX_HEADER, size - 8):
                    raise ValueError("header length runs past the end of the file")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise FinsurgError(f"truncated or corrupt safetensors file {path}: {exc}") from None
        self.metadata = header.pop("__metadata__", None) or {}
        base = 8 + length
        self.tensors: dict[str, TensorInfo] = {}
        covered = 0
        for name, entry in header.items():
            try:
                code, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
                expected = math.prod(shape) * itemsize(code)
            except (KeyError, TypeError, ValueError) as exc:
                raise FinsurgError(f"corrupt safetensors header in {path}: entry {name!r} ({exc})") from None
            if end - start != expected or start < 0:
                raise FinsurgError(f"corrupt safetensors header in {path}: {name} has the wrong byte length")
            self.tensors[name] = TensorInfo(name, code, shape, base + start, base + end)
            covered = max(covered, end)
        if base + covered > size:
            raise FinsurgError(f"truncated safetensors file {path}: data ends at byte {size}, header needs {base + covered}")

    def chunks(self, info: TensorInfo, chunk: int = CHUNK) -> Iterator[bytes]:
        with open(self.path, "rb") as handle:
            handle.seek(info.start)
            left = info.nbytes
            while left:
                block = handle.read(min(chunk, left))
                if not block:
                    raise FinsurgError(f"truncated safetensors file {self.path} while reading {info.name}")
                left -= len(block)
                yield block

    def cast_chunks(self, info: TensorInfo, code: str) -> Iterator[bytes]:
        """The tensor's bytes converted to dtype `code`, a bounded slice at a time."""
        if code == info.dtype or info.dtype not in FLOAT_CODES:
            yield from self.chunks(info)
            return
        src, dst = TORCH_DTYPES[info.dtype], TORCH_DTYPES[code]
        step = CHUNK - CHUNK % src.itemsize
        for block in self.chunks(info, step):
            yield tensor_bytes(torch.frombuffer(bytearray(block), dtype=src).to(dst))

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        raw = bytearray(b"".join(self.chunks(info)))
        return torch.frombuffer(raw, dtype=TORCH_DTYPES[info.dtype]).reshape(info.shape) if raw else torch.empty(
            info.shape, dtype=TORCH_DTYPES[info.dtype]
        )


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@dataclass(frozen=True)
class Entry:
    """One tensor to write: its header fields and a callable that yields its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Callable[[], Iterable[bytes]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "Entry":
        data = tensor_bytes(tensor)
        return cls(name, CODES[tensor.dtype], tuple(tensor.shape), lambda: [data])


def write_safetensors(path: Path, entries: list[Entry], on_bytes: Callable[[int], None] = lambda n: None) -> str:
    """Write entries (sorted by name) to path; return the file's SHA256."""
    entries = sorted(entries, key=lambda e: e.name)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.name] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        for block in (struct.pack("<Q", len(text)), text):
            digest.update(block)
            handle.write(block)
        for entry in entries:
            written = 0
            for block in entry.source():
                digest.update(block)
                handle.write(block)
                written += len(block)
                on_bytes(len(block))
            if written != entry.nbytes:
                raise FinsurgError(f"{entry.name}: wrote {written} bytes, expected {entry.nbytes}")
    return digest.hexdigest()
