"""A variant directory as GGUF: the baked file for llama.cpp and Ollama, and the recipe's control vector."""

from __future__ import annotations

from pathlib import Path

import torch

from finsurg.bake.gguf_source import OUTTYPES, base_gguf
from finsurg.engines.converter import convert
from finsurg.errors import FinsurgError
from finsurg.io.gguf_file import write_baked_gguf, write_control_vector, written
from finsurg.io.hashing import check_sums, sha256_file
from finsurg.steer.arch import Architecture, by_name
from finsurg.variant.directory import Variant
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
    check_expressible(by_name(variant.record.base_model.architecture))
    target = out or directory / f"model-{kind}.gguf"
    if variant.surgery.gated:
        converted_variant(directory, converter, OUTTYPES.get(variant.dtype, "f32") if kind == "keep" else kind, target)
    else:
        base = base_gguf(variant.record.base_model, Path(variant.record.base_model.path), converter)
        write_baked_gguf(base, variant.surgery.always(), target, kind)
    if target.parent.resolve() == directory.resolve():
        seal(directory)
    return {"variant": variant.name, "path": str(target), "bytes": target.stat().st_size, "sha256": sha256_file(target)}


def converted_variant(directory: Path, script: Path | None, outtype: str, target: Path) -> None:
    """A conditional variant as GGUF: its grafted checkpoint (wider MLPs with gate, up and down biases) through
    llama.cpp's own converter, since the base GGUF has no room for the graft's neurons."""
    if script is None or not script.is_file():
        raise FinsurgError(
            "a conditional variant's GGUF is its grafted checkpoint converted by llama.cpp's convert_hf_to_gguf.py, "
            "which was not found; run make llamacpp-setup or set FINSURG_LLAMACPP_CONVERTER"
        )
    with written(target) as partial:
        convert(script, directory, outtype, partial)


def control_vector(offsets: dict[int, torch.Tensor], arch: Architecture, out: Path) -> dict:
    check_expressible(arch)
    write_control_vector(offsets, arch.family, out)
    return {"path": str(out), "layers": sorted(offsets), "sha256": sha256_file(out)}
