"""The base GGUF a llama.cpp export starts from: the file the base was converted from, or a conversion.

A base that came from a GGUF (the default model does) is used as it is, after its SHA256 is checked
against the surgery record. A safetensors base is converted once, with llama.cpp's own
converter (finsurg.engines.converter), into the cache folder.
"""

from __future__ import annotations

from pathlib import Path

from finsurg.engines.converter import convert
from finsurg.errors import FinsurgError
from finsurg.io.atomic import building
from finsurg.io.hashing import cached_sha256
from finsurg.io.home import finsurg_home
from finsurg.models.source import read_config
from finsurg.variant.record import BaseModelInfo

OUTTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def base_gguf(base: BaseModelInfo, base_path: Path, script: Path | None) -> Path:
    if base.gguf:
        path = Path(base.gguf)
        if not path.is_file():
            raise FinsurgError(f"the base GGUF {path} recorded for this variant is missing")
        if base.gguf_sha256 and cached_sha256(path) != base.gguf_sha256:
            raise FinsurgError(f"{path} is not the GGUF this variant's base was converted from (SHA256 differs)")
        return path
    return convert_base(base_path, base.files, script)


def convert_base(base_path: Path, files: dict[str, str], script: Path | None) -> Path:
    """The safetensors base as GGUF in its own dtype, converted once by llama.cpp's converter."""
    if script is None or not script.is_file():
        raise FinsurgError(
            "the base is safetensors and llama.cpp's convert_hf_to_gguf.py was not found; run make llamacpp-setup "
            "or set FINSURG_LLAMACPP_CONVERTER"
        )
    dtype = read_config(base_path).get("dtype") or read_config(base_path).get("torch_dtype") or "float32"
    outtype = OUTTYPES.get(dtype, "f32")
    digest = "".join(files[name][:8] for name in sorted(files))[:16]
    target = finsurg_home() / "gguf" / f"{base_path.name}-{digest}-{outtype}"
    final = target / "model.gguf"
    if final.is_file():
        return final
    with building(target) as partial:
        convert(script, base_path, outtype, partial / "model.gguf")
    return final
