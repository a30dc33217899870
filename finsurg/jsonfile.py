"""Read a JSON file the user handed in: a missing or malformed one is one FinsurgError line."""

from __future__ import annotations

import json
from pathlib import Path

from finsurg.errors import FinsurgError


def read_json(path: Path, missing: str) -> object:
    """The parsed file; `missing` is the message when it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FinsurgError(missing) from None
    except json.JSONDecodeError as exc:
        raise FinsurgError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise FinsurgError(f"{path} is not valid JSON (not UTF-8 text)") from None
