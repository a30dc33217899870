"""Safetensors files as headers and bounded slices (read with `safe_open`), and a streaming writer.

Nothing here builds a model or holds a whole checkpoint: a tensor that must be rewritten moves
a slice of rows at a time, so an export needs memory for one chunk, not one model.
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
from safetensors import SafetensorError, safe_open

from finsurg.dtypes import CODE_OF, CODES
from finsurg.errors import FinsurgError

CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * CODES[self.dtype].itemsize


class SafetensorsFile:
    """The checked header of one .safetensors file; data stays on disk."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with safe_open(path, "pt") as handle:
                self.tensors = {
                    name: TensorInfo(
                        name, handle.get_slice(name).get_dtype(), tuple(handle.get_slice(name).get_shape())
                    )
                    for name in handle.keys()
                }
        except (SafetensorError, OSError) as exc:
            raise FinsurgError(f"truncated or corrupt safetensors file {path}: {exc}") from None
        unknown = next((info for info in self.tensors.values() if info.dtype not in CODES), None)
        if unknown is not None:
            raise FinsurgError(f"{path}: tensor {unknown.name} has dtype {unknown.dtype}, which finsurg cannot copy")

    def read(self, name: str) -> torch.Tensor:
        with safe_open(self.path, "pt") as handle:
            return handle.get_tensor(name)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        with safe_open(self.path, "pt") as handle:
            return handle.get_slice(name)[start:stop]

    def slices(self, info: TensorInfo, dtype: torch.dtype) -> Iterator[bytes]:
        """The tensor's bytes in `dtype`, a bounded slice of rows at a time."""
        with safe_open(self.path, "pt") as handle:
            if not info.shape:
                yield tensor_bytes(handle.get_tensor(info.name).to(dtype))
                return
            view = handle.get_slice(info.name)
            row_bytes = max(1, info.nbytes // max(1, info.shape[0]))
            rows = max(1, CHUNK // row_bytes)
            for start in range(0, info.shape[0], rows):
                yield tensor_bytes(view[start : start + rows].to(dtype))


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
        return math.prod(self.shape) * CODES[self.dtype].itemsize

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> Entry:
        data = tensor_bytes(tensor)
        return cls(name, CODE_OF[tensor.dtype], tuple(tensor.shape), lambda: [data])


def write_safetensors(path: Path, entries: list[Entry], on_bytes: Callable[[int], None] = lambda n: None) -> str:
    """Write entries (sorted by name) to path as a stream; return the file's SHA256."""
    entries = sorted(entries, key=lambda e: e.name)
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
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
