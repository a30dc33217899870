"""Prompt sets: a positive, a negative and a neutral category, each with a fixed train/held-out split.

A set is a directory holding manifest.json and one JSON file per category. The shipped set is
finance advice vs caution; `--prompts DIR` points the analysis at any other behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json

MIN_TRAIN = 4


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    positive: str
    negative: str
    neutral: str
    keywords: list[str] = Field(min_length=1)
    continuations: Pair
    probes: list[str] = Field(min_length=1)
    tokens: Pair
    neutral_text: str = "neutral_text.json"


@dataclass(frozen=True)
class Category:
    name: str
    train: list[str]
    heldout: list[str]


@dataclass(frozen=True)
class PromptSet:
    manifest: Manifest
    positive: Category
    negative: Category
    neutral: Category
    neutral_text: list[str]
    source: str

    @property
    def categories(self) -> list[Category]:
        return [self.positive, self.negative, self.neutral]

    @classmethod
    def load(cls, directory: Path | None = None) -> "PromptSet":
        if directory is None:
            with resources.as_file(resources.files("finsurg") / "data" / "prompts" / "finance") as shipped:
                return cls._read(shipped, "finsurg:finance")
        if not directory.is_dir():
            raise FinsurgError(f"prompt set not found: {directory} is not a directory")
        return cls._read(directory, str(directory))

    @classmethod
    def _read(cls, directory: Path, source: str) -> "PromptSet":
        try:
            manifest = Manifest.model_validate(_json(directory / "manifest.json"))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise FinsurgError(f"{directory / 'manifest.json'}: {where}: {err['msg'].lower()}") from None
        categories = [_category(directory, name) for name in (manifest.positive, manifest.negative, manifest.neutral)]
        neutral_text = _json(directory / manifest.neutral_text)
        if not isinstance(neutral_text, list) or not neutral_text or not all(isinstance(t, str) for t in neutral_text):
            raise FinsurgError(f"{directory / manifest.neutral_text}: expected a non-empty list of strings")
        return cls(manifest, *categories, neutral_text=neutral_text, source=source)


def _json(path: Path):
    return read_json(path, f"prompt set file not found: {path}")


def _category(directory: Path, name: str) -> Category:
    """{"train": [...], "heldout": [...]}, or a plain list whose last quarter is held out."""
    raw = _json(directory / f"{name}.json")
    if isinstance(raw, list):
        cut = len(raw) - max(1, len(raw) // 4)
        raw = {"train": raw[:cut], "heldout": raw[cut:]}
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(key), list) and all(isinstance(t, str) for t in raw[key]) for key in ("train", "heldout")
    ):
        raise FinsurgError(f"{directory / name}.json: expected train and heldout lists of strings")
    if len(raw["train"]) < MIN_TRAIN or not raw["heldout"]:
        raise FinsurgError(f"{directory / name}.json: needs at least {MIN_TRAIN} train and 1 held-out prompt")
    overlap = set(raw["train"]) & set(raw["heldout"])
    if overlap:
        raise FinsurgError(f"{directory / name}.json: a prompt is in both train and heldout: {sorted(overlap)[0]!r}")
    return Category(name, list(raw["train"]), list(raw["heldout"]))
