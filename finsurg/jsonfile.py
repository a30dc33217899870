"""Read a JSON file the user handed in, and say what is wrong with it in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

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


def write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def validation_message(exc: ValidationError, root: str = "recipe", label: Callable[[tuple], str] | None = None) -> str:
    """pydantic's first error in one line: `field.path: message` (`label` names the field another way)."""
    err = exc.errors()[0]
    if err["type"] == "value_error":  # our own validators word their message whole
        return str(err["ctx"]["error"])
    if err["type"] == "extra_forbidden":
        return f"unknown field {'.'.join(map(str, err['loc']))!r}"
    where = label(err["loc"]) if label else ".".join(str(part) for part in err["loc"]) or root
    return f"{where}: {err['msg'][0].lower()}{err['msg'][1:]}"
