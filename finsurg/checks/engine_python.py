"""The Python interpreter of an inference engine that lives in an environment of its own (vLLM, llama.cpp)."""

from __future__ import annotations

import os
import subprocess
import sys

from finsurg.errors import FinsurgError


def engine_python(explicit: str | None, env_var: str, modules: list[str], engine: str, missing: str) -> str:
    """`explicit`, else $env_var, else this Python; refused with the `missing` hint unless it imports `modules`."""
    python = explicit or os.environ.get(env_var) or sys.executable
    probe = f"import importlib.util as u; print(all(u.find_spec(m) is not None for m in {modules!r}))"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError:
        raise FinsurgError(f"cannot run {python} (from the command line or {env_var})") from None
    if found != "True":
        raise FinsurgError(f"{engine} is not installed for {python}: {missing}")
    return python
