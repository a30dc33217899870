"""finsurg's cache folder: converted models, converted GGUFs and known file hashes."""

from __future__ import annotations

import os
from pathlib import Path


def finsurg_home() -> Path:
    return Path(os.environ.get("FINSURG_HOME") or Path.home() / ".cache" / "finsurg")
