"""llama.cpp's own convert_hf_to_gguf.py, shipped in the llama-cpp-python source distribution
(make llamacpp-setup puts it in the llama.cpp environment)."""

from __future__ import annotations

import sys
from pathlib import Path

from finsurg.engines.runner import run_command
from finsurg.environment import environment


def converter(llamacpp_python: str | None = None) -> Path | None:
    """convert_hf_to_gguf.py: FINSURG_LLAMACPP_CONVERTER, else beside the llama.cpp environment's Python
    (`llamacpp_python`, else FINSURG_LLAMACPP_PYTHON)."""
    env = environment()
    if env.llamacpp_converter is not None:
        return env.llamacpp_converter
    llamacpp_python = llamacpp_python or env.llamacpp_python
    if llamacpp_python:
        candidate = Path(llamacpp_python).parent.parent / "share" / "llama.cpp" / "convert_hf_to_gguf.py"
        if candidate.is_file():
            return candidate
    return None


def convert(script: Path, model_dir: Path, outtype: str, outfile: Path) -> None:
    """A safetensors directory as one GGUF file of `outtype` (f32, bf16, f16)."""
    argv = [sys.executable, str(script), str(model_dir), "--outtype", outtype, "--outfile", str(outfile)]
    run_command(argv, f"llama.cpp's converter on {model_dir}")
