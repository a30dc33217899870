"""A safetensors checkpoint directory seen as shards and tensor headers, never as a model.

It is also a read-only mapping from tensor name to tensor, read on demand.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from finsurg.errors import FinsurgError
from finsurg.io.safetensors_io import SafetensorsFile, TensorInfo

INDEX_NAME = "model.safetensors.index.json"


class Checkpoint(Mapping[str, torch.Tensor]):
    def __init__(self, path: Path, shards: list[SafetensorsFile]):
        self.path, self.shards = path, shards
        self._shard_of = {name: shard for shard in shards for name in shard.tensors}

    @classmethod
    def open(cls, path: Path) -> Checkpoint:
        index = path / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise FinsurgError(f"corrupt {index}: {exc}") from None
            names = sorted(set(weight_map.values()))
        else:
            names = sorted(p.name for p in path.glob("*.safetensors"))
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise FinsurgError(f"{path}: shard listed in the index is missing: {missing[0]}")
        if not names:
            raise FinsurgError(f"{path} has no .safetensors weights")
        shards = [SafetensorsFile(path / name) for name in names]
        seen: set[str] = set()
        for shard in shards:
            repeated = seen & shard.tensors.keys()
            if repeated:
                raise FinsurgError(f"{path}: tensor {sorted(repeated)[0]} appears in two shards")
            seen |= shard.tensors.keys()
        return cls(path, shards)

    def info(self, name: str) -> TensorInfo:
        if name not in self._shard_of:
            raise FinsurgError(
                f"{self.path}: tensor {name} not found; is this checkpoint of the family its config names?"
            )
        return self._shard_of[name].tensors[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        self.info(name)
        return self._shard_of[name].read(name)

    def shard(self, filename: str) -> SafetensorsFile:
        return next(shard for shard in self.shards if shard.path.name == filename)

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows start..stop of a tensor, read alone."""
        self.info(name)
        return self._shard_of[name].rows(name, start, stop)

    def slices(self, name: str, dtype: torch.dtype) -> Iterator[bytes]:
        """A tensor's bytes in `dtype`, a bounded slice at a time."""
        return self._shard_of[name].slices(self.info(name), dtype)

    def __contains__(self, name: object) -> bool:
        return name in self._shard_of

    def __iter__(self) -> Iterator[str]:
        return iter(self._shard_of)

    def __len__(self) -> int:
        return len(self._shard_of)

    @property
    def total_bytes(self) -> int:
        return sum(shard.path.stat().st_size for shard in self.shards)
