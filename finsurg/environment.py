"""The process environment finsurg reads, as one typed object: every `FINSURG_*` variable that is not a command's
option (those are read by finsurg.settings) is declared here, and nothing else reads the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FINSURG_", extra="ignore")

    home: Path = Path.home() / ".cache" / "finsurg"  # converted models and GGUFs, known file hashes
    vllm_python: str | None = None  # the Python that has vLLM
    llamacpp_python: str | None = None  # the Python that has llama.cpp (llama-cpp-python and gguf)
    llamacpp_converter: Path | None = None  # llama.cpp's convert_hf_to_gguf.py, if not beside that Python


def environment() -> Environment:
    """Read now, not at import: tests and callers may set a variable after finsurg is imported."""
    return Environment()
