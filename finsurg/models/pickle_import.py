"""Convert a pickle (.bin) checkpoint directory to safetensors; only behind --allow-pickle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def convert_pickle_dir(source: Path, out_dir: Path) -> None:
    import torch
    from safetensors.torch import save_file

    shards = sorted(source.glob("*.bin"))
    weight_map = {}
    for number, path in enumerate(shards, start=1):
        state = torch.load(path, map_location="cpu", weights_only=True)
        seen: set[int] = set()
        tensors = {}
        for name, tensor in state.items():
            # safetensors refuses shared storage (tied embeddings); store a copy instead
            key = tensor.untyped_storage().data_ptr()
            tensors[name] = tensor.clone().contiguous() if key in seen else tensor.contiguous()
            seen.add(key)
        filename = "model.safetensors" if len(shards) == 1 else f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, out_dir / filename, metadata={"format": "pt"})
        weight_map.update({name: filename for name in tensors})
    if len(shards) > 1:
        index = {"metadata": {}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for extra in source.iterdir():
        if extra.is_file() and extra.suffix not in (".bin", ".pt") and not extra.name.endswith(".bin.index.json"):
            shutil.copy2(extra, out_dir / extra.name)
