"""finsurg's cache folder: converted models, converted GGUFs and known file hashes."""

from __future__ import annotations

from pathlib import Path

from finsurg.environment import environment


def finsurg_home() -> Path:
    return environment().home
