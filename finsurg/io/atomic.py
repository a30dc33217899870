"""Output directories that appear complete or not at all.

Work goes into a hidden sibling `.NAME.partial-PID`, renamed into place when complete. Partials
of killed runs (their PID is gone) are removed by the next run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finsurg.errors import FinsurgError


def refuse_existing(final: Path, overwrite: bool) -> None:
    """One line, before any work, where an output exists and may not be replaced."""
    if final.exists() and not overwrite:
        raise FinsurgError(f"{final} already exists; pass --overwrite to replace it")


def partial_dir(final: Path) -> Path:
    return final.parent / f".{final.name}.partial-{os.getpid()}"


def clean_stale_partials(final: Path) -> None:
    for leftover in final.parent.glob(f".{final.name}.partial-*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(partial: Path, final: Path) -> None:
    """Rename the finished directory into place, replacing an old one only at the last moment."""
    if final.exists():
        retired = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, retired)
        os.rename(partial, final)
        shutil.rmtree(retired)
    else:
        os.rename(partial, final)


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a fresh partial directory for final; publish it on success, remove it on any failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(final)
    partial = partial_dir(final)
    partial.mkdir()
    try:
        yield partial
        publish(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
