"""`finsurg pack check` and `finsurg pack init`: what a pack holds, where each part comes from, what each
optional part would enable; and a full pack directory written from one file of pairs."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from finsurg.errors import FinsurgError
from finsurg.packs.manifest import GENERIC_DISCLAIMER, Manifest
from finsurg.packs.pack import GENERAL_PROMPTS, Pack

# an optional part -> what it enables
ENABLES = {
    "off_topic": "the conditional route (a steer gated on the topic), the monitor's topic label, and off-topic "
    "answers in the report",
    "topic_prose": "the conditional route's on-topic prose budget",
    "generation_rules": "judged answers: the route search's objective and the report's 'what users see' (with "
    "off_topic)",
    "system_prompts": "the prompting baseline beside every effect and in lm-eval",
    "tasks": "the pack's own lm-eval tasks (without: a preference task from the held-out pairs, with the shipped "
    "general tasks)",
    "verification_prompts": "the prompts verification generates from (without: held-out category prompts)",
    "disclaimer": "the pack's own disclaimer on every output and card (without: a generic one)",
}
MIN_HELDOUT = 20  # below this, a held-out interval is wide
EXAMPLES = {
    "off_topic.example.json": {
        "description": "Conversations off the pack's topic; rename to off_topic.json to enable the conditional route.",
        "train": [{"question": "How do I make rice less sticky?", "reply": "Rinse it before cooking."}] * 4,
        "tune": [{"question": "Why is the sky blue?", "reply": "Air scatters blue light more than red."}],
        "heldout": [{"question": "How do I tie a tie?", "reply": "Start with the wide end on your right."}],
    },
    "topic_prose.example.json": {
        "description": "On-topic prose that explains and does not do the behaviour; rename to topic_prose.json.",
        "tune": ["A paragraph about the topic that explains without taking a side."],
        "heldout": ["Another such paragraph."],
    },
}


class PackCheck(BaseModel):
    source: str
    name: str
    problems: list[str]  # what stops the pack from loading
    warnings: list[str]  # what weakens what it can show
    counts: dict[str, int]
    sources: dict[str, str]
    optional: dict[str, bool]  # each optional part: present or not

    def text(self) -> str:
        if self.problems:
            return f"Pack {self.source} does not load"
        lines = [f"Pack {self.name} ({self.source}): " + ", ".join(f"{k} {v}" for k, v in self.counts.items())]
        lines += [f"  warning: {line}" for line in self.warnings]
        lines += [f"  {part}: {origin}" for part, origin in self.sources.items()]
        lines += [
            f"  {'has' if present else 'no'} {part}: {'enables' if present else 'would enable'} {ENABLES[part]}"
            for part, present in self.optional.items()
        ]
        return "\n".join(lines)


def check_pack(spec: str | Path) -> PackCheck:
    """The pack's counts and sources, or the one problem that stops it from loading."""
    try:
        pack = Pack.load(spec)
    except FinsurgError as exc:
        return PackCheck(
            source=str(spec),
            name=Path(str(spec)).stem,
            problems=[str(exc)],
            warnings=[],
            counts={},
            sources={},
            optional={},
        )
    counts = {}
    if pack.answers is not None:
        counts |= {f"{split} pairs": len(getattr(pack.answers, split)) for split in ("train", "tune", "heldout")}
    counts[f"{pack.positive.name} prompts"] = len(pack.positive.train) + len(pack.positive.heldout)
    warnings = _thin(pack)
    present = {part: bool(getattr(pack.manifest, part)) for part in ENABLES if part != "disclaimer"}
    present["disclaimer"] = pack.manifest.disclaimer != GENERIC_DISCLAIMER
    if present["generation_rules"] and not present["off_topic"]:
        warnings.append("generation_rules judge answers only on the conditional route, which needs off_topic")
    return PackCheck(
        source=pack.source,
        name=pack.name,
        problems=[],
        warnings=warnings,
        counts=counts,
        sources=pack.sources,
        optional=present,
    )


def _thin(pack: Pack) -> list[str]:
    if pack.answers is None:
        return ["no paired answers: answer-behaviour steering (the default analysis) needs them"]
    heldout = len(pack.answers.heldout)
    return (
        [f"only {heldout} held-out pairs: at least {MIN_HELDOUT} give a usable interval"]
        if heldout < MIN_HELDOUT
        else []
    )


def init_pack(name: str, pairs: Path, into: Path) -> Manifest:
    """A pack called `name`, written into the directory `into`: the pairs' splits, a manifest that names every
    default it uses and every derived field, and example files for the optional parts."""
    pack = Pack.load(pairs)
    (into / "answers.json").write_text(pack.answer_pairs().model_dump_json(indent=2) + "\n")
    questions = {"train": pack.positive.train, "heldout": pack.positive.heldout}
    (into / "questions.json").write_text(json.dumps(questions, indent=2) + "\n")
    update = {"name": name, "answers": "answers.json", "positive": "questions"}
    manifest = pack.manifest.model_copy(update=update | {"negative": GENERAL_PROMPTS, "neutral": GENERAL_PROMPTS})
    fields = manifest.model_dump(mode="json", exclude_none=True)
    (into / "manifest.json").write_text(json.dumps(fields, indent=2) + "\n")
    for file, example in EXAMPLES.items():
        (into / file).write_text(json.dumps(example, indent=2) + "\n")
    return manifest
