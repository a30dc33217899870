"""A safetensors checkpoint directory seen as shards and tensor headers, never as a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from finsurg.errors import FinsurgError
from finsurg.exporter.safetensors_io import SafetensorsFile, TensorInfo

INDEX_NAME = "model.safetensors.index.json"


@dataclass
class Checkpoint:
    path: Path
    shards: list[SafetensorsFile]

    @classmethod
    def open(cls, path: Path) -> "Checkpoint":
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
        return cls(path=path, shards=shards)

    def info(self, name: str) -> TensorInfo:
        for shard in self.shards:
            if name in shard.tensors:
                return shard.tensors[name]
        raise FinsurgError(f"{self.path}: tensor {name} not found; is this a Llama checkpoint?")

    def shard_of(self, name: str) -> SafetensorsFile:
        for shard in self.shards:
            if name in shard.tensors:
                return shard
        raise FinsurgError(f"{self.path}: tensor {name} not found")

    def names(self) -> set[str]:
        return {name for shard in self.shards for name in shard.tensors}

    @property
    def total_bytes(self) -> int:
        return sum(shard.path.stat().st_size for shard in self.shards)
