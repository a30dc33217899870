"""A variant directory as GGUF: the baked file for llama.cpp and Ollama, and the recipe's control vector."""

from __future__ import annotations

from pathlib import Path

import torch

from finsurg.bake.gguf_source import base_gguf
from finsurg.errors import FinsurgError
from finsurg.io.gguf_file import write_baked_gguf, write_control_vector
from finsurg.io.hashing import check_sums, sha256_file
from finsurg.steer.arch import Architecture, by_name
from finsurg.variant.record import Variant
from finsurg.variant.seal import seal

CONTROL_VECTOR_NAME = "finsurg-control-vector.gguf"


def check_expressible(arch: Architecture) -> None:
    """llama.cpp adds a control vector, and the llama graph a ffn_down bias, to a block's output only."""
    if arch.site.name != "layer_output":
        raise FinsurgError(
            f"llama.cpp cannot express a {arch.site.name} site ({arch.site.description}); only offsets added "
            "after a block have a GGUF form"
        )


def variant_gguf(directory: Path, out: Path | None, kind: str, converter: Path | None) -> dict:
    """Write the variant's GGUF (inside it by default, then recorded in its card and SHA256SUMS)."""
    variant = Variant(directory)
    check_sums(directory)
    check_expressible(by_name(variant.surgery.base_model.architecture))
    base = base_gguf(variant.surgery.base_model, Path(variant.surgery.base_model.path), converter)
    target = out or directory / f"model-{kind}.gguf"
    write_baked_gguf(base, variant.offsets, target, kind)
    if target.parent.resolve() == directory.resolve():
        seal(directory)
    return {"variant": variant.name, "path": str(target), "bytes": target.stat().st_size, "sha256": sha256_file(target)}


def control_vector(offsets: dict[int, torch.Tensor], arch: Architecture, out: Path) -> dict:
    check_expressible(arch)
    write_control_vector(offsets, arch.family, out)
    return {"path": str(out), "layers": sorted(offsets), "sha256": sha256_file(out)}
