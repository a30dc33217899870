"""Paired answers from a user's file: finsurg's splits, a list of pairs, or A/B multiple-choice items, split by
question when the file has no splits.

A line (JSONL) or list item is `{"question", "positive", "negative"}`, or an A/B item as in model-written
evals and CAA: `question` holding "(A) ... (B) ..." choices, `answer_matching_behavior` and
`answer_not_matching_behavior`. The pair is then the question's text before its choices and each choice's text,
so that the steer is read from answers a user would see.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from pydantic import ValidationError

from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json, validation_message
from finsurg.packs.manifest import AnswerPair, AnswerSplits

SPLITS = ("train", "tune", "heldout")
# the share of questions each split gets when a file has none; tune and held-out get at least one each
SHARES = {"tune": 0.2, "heldout": 0.2}
MIN_QUESTIONS = 3
SPLIT_RULE = (
    "split by question: questions ordered by the SHA-256 of their text (case and spaces folded), then the first "
    "60% train, the next 20% tune, the rest held-out; a repeated question stays in one split"
)
_STEM_END = re.compile(r"\s*(choices|options)\s*:?\s*$", re.I)
_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*?)(?=\s*\([A-Z]\)|\n\s*\n|\Z)", re.S)


def read_pairs(path: Path) -> tuple[AnswerSplits, bool]:
    """The file's splits, and whether they were derived here (the file had none)."""
    if path.suffix == ".jsonl":
        items = _jsonl(path)
    else:
        raw = read_json(path, f"paired answers not found: {path}")
        if isinstance(raw, dict) and "train" in raw:
            try:
                return AnswerSplits.model_validate(raw), False
            except ValidationError as exc:
                raise FinsurgError(f"{path}: {validation_message(exc, path.name)}") from None
        if not isinstance(raw, list):
            raise FinsurgError(f"{path}: expected train/tune/heldout splits or a list of pairs")
        items = raw
    pairs = [_pair(item, f"{path}: item {i + 1}") for i, item in enumerate(items)]
    return split_by_question(pairs, path), True


def split_by_question(pairs: list[AnswerPair], path: Path) -> AnswerSplits:
    groups: dict[str, list[AnswerPair]] = {}
    for pair in pairs:
        groups.setdefault(_key(pair.question), []).append(pair)
    if len(groups) < MIN_QUESTIONS:
        raise FinsurgError(f"{path}: needs at least {MIN_QUESTIONS} distinct questions to split, found {len(groups)}")
    order = sorted(groups, key=lambda key: hashlib.sha256(key.encode()).hexdigest())
    tune, heldout = (max(1, round(SHARES[name] * len(order))) for name in ("tune", "heldout"))
    cuts = {"train": order[: len(order) - tune - heldout], "tune": order[len(order) - tune - heldout : -heldout]}
    cuts["heldout"] = order[-heldout:]
    return AnswerSplits(
        description=f"{path.name}, {SPLIT_RULE}",
        **{name: [pair for key in keys for pair in groups[key]] for name, keys in cuts.items()},
    )


def _key(question: str) -> str:
    return " ".join(question.lower().split())


def _jsonl(path: Path) -> list:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise FinsurgError(f"paired answers not found: {path}") from None
    except UnicodeDecodeError:
        raise FinsurgError(f"{path}: not UTF-8 text") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise FinsurgError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None
    if not items:
        raise FinsurgError(f"{path}: no pairs")
    return items


def _pair(item: object, where: str) -> AnswerPair:
    if isinstance(item, dict) and "answer_matching_behavior" in item:
        item = _from_choices(item, where)
    try:
        return AnswerPair.model_validate(item)
    except ValidationError as exc:
        raise FinsurgError(f"{where}: {validation_message(exc, 'pair')}") from None


def _from_choices(item: dict, where: str) -> dict:
    """An A/B item as a pair: the question's text before its choices, and each choice's text; where the choices
    cannot be found, the whole question and the two letters."""
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        raise FinsurgError(f"{where}: an A/B item needs a question")
    choices = {letter: text.strip() for letter, text in _CHOICE.findall(question)}
    letters = []
    for key in ("answer_matching_behavior", "answer_not_matching_behavior"):
        value = item.get(key)
        value = value[0] if isinstance(value, list) and value else value
        letter = re.fullmatch(r"\s*\(?([A-Z])\)?\s*", value) if isinstance(value, str) else None
        if letter is None:
            raise FinsurgError(f'{where}: {key} should be a choice letter such as "(A)", got {value!r}')
        letters.append(letter.group(1))
    first = _CHOICE.search(question)
    stem = _STEM_END.sub("", question[: first.start()]).strip() if first else ""
    if stem and all(choices.get(letter) for letter in letters):
        return {"question": stem, "positive": choices[letters[0]], "negative": choices[letters[1]]}
    return {"question": question.strip(), "positive": f"({letters[0]})", "negative": f"({letters[1]})"}
