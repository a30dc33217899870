"""llama.cpp's own convert_hf_to_gguf.py, shipped in the llama-cpp-python source distribution
(make llamacpp-setup puts it in the llama.cpp environment)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from finsurg.engines.runner import run_command


def converter(llamacpp_python: str | None = None) -> Path | None:
    """convert_hf_to_gguf.py: FINSURG_LLAMACPP_CONVERTER, else beside the llama.cpp environment's Python
    (`llamacpp_python`, else FINSURG_LLAMACPP_PYTHON)."""
    if os.environ.get("FINSURG_LLAMACPP_CONVERTER"):
        return Path(os.environ["FINSURG_LLAMACPP_CONVERTER"])
    llamacpp_python = llamacpp_python or os.environ.get("FINSURG_LLAMACPP_PYTHON")
    if llamacpp_python:
        candidate = Path(llamacpp_python).parent.parent / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
        if candidate.is_file():
            return candidate
    return None


def convert(script: Path, model_dir: Path, outtype: str, outfile: Path) -> None:
    """A safetensors directory as one GGUF file of `outtype` (f32, bf16, f16)."""
    argv = [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]
    run_command(argv, f"llama.cpp's converter on {model_dir}")
