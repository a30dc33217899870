"""The typed pieces every command's options are made of: a field's help and CLI hints, option groups, and the
values validated once here (alpha, device) rather than again where they are used."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

DEVICE_PATTERN = r"auto|cpu|cuda(?::(\d+))?"
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def flag(help: str, **cli) -> dict:
    """Field arguments: the help text, and CLI hints (flag name, positional, comma-separated list)."""
    return {"description": help, "json_schema_extra": cli or None}


class Group(BaseModel):
    """A set of options that belong together; a command's settings inherit it or hold it."""

    model_config = ConfigDict(extra="forbid")


def finite_alpha(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"alpha must be a finite number, got {value}")
    return float(value)


def _device(value: str) -> str:
    if not re.fullmatch(DEVICE_PATTERN, value):
        raise ValueError(f"unknown device {value!r} (choose {DEVICE_CHOICES})")
    return value


Alpha = Annotated[float, AfterValidator(finite_alpha)]
Device = Annotated[str, AfterValidator(_device)]
