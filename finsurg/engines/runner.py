"""Run an engine that lives in an environment of its own (vLLM, lm-eval on vLLM, llama.cpp, llama.cpp's converter).

One request format: the script under scripts/ is run as `python SCRIPT REQUEST.json RESULT.json` in a
scratch directory (also given to it as request["scratch"], for bulky outputs such as arrays), and its reply
is the JSON it writes to RESULT.json. One error path: a non-zero exit, a time-out or a missing reply becomes
one FinsurgError line naming the engine and the last error line it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from finsurg.environment import environment
from finsurg.errors import FinsurgError

SCRIPTS = Path(__file__).with_name("scripts")


def engine_python(explicit: str | None, setting: str, modules: list[str], engine: str, missing: str) -> str:
    """`explicit`, else the environment's `setting` (FINSURG_<SETTING>), else this Python; refused with the
    `missing` hint unless it imports `modules`."""
    env_var = f"FINSURG_{setting.upper()}"
    python = explicit or getattr(environment(), setting) or sys.executable
    probe = f"import importlib.util as u; print(all(u.find_spec(m) is not None for m in {modules!r}))"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip()
    except OSError:
        raise FinsurgError(f"cannot run {python} (from the command line or {env_var})") from None
    if found != "True":
        raise FinsurgError(f"{engine} is not installed for {python}: {missing}")
    return python


def last_error(stderr: str) -> str:
    """The line of an engine's stderr that says what went wrong: the last naming an error, else the last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    named = [line for line in lines if "Error" in line or "error" in line]
    return ((named or lines or ["no output"])[-1])[:300]


def run_command(
    argv: list[str],
    engine: str,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> None:
    """Run argv to completion; `env` holds defaults the caller's environment can override."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env={**(env or {}), **os.environ}, cwd=cwd
        )
    except subprocess.TimeoutExpired:
        raise FinsurgError(f"{engine} did not finish within {timeout:g} s") from None
    except OSError as exc:
        raise FinsurgError(f"cannot run {argv[0]} for {engine}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        raise FinsurgError(f"{engine} failed: {last_error(done.stderr)}")


def run_script(
    python: str,
    script: str,
    request: dict,
    scratch: Path,
    engine: str,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> dict:
    """Run scripts/<script> under `python` on `request`; return its reply."""
    request_path, result_path = scratch / "request.json", scratch / "result.json"
    request_path.write_text(json.dumps({**request, "scratch": str(scratch)}))
    run_command([python, str(SCRIPTS / script), str(request_path), str(result_path)], engine, timeout, env, scratch)
    if not result_path.is_file():
        raise FinsurgError(f"{engine} exited without a result")
    return json.loads(result_path.read_text())
