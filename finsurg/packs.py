"""Behaviour packs: everything one behaviour needs, in one data folder.

A pack holds manifest.json and one JSON file per prompt category (a positive, a negative and a
neutral one, each with a fixed train/held-out split), neutral text for the perplexity cost,
probe prompts and tokens for the logit lens, and optionally lm-eval tasks (`tasks/`),
verification and surgery prompts, and the wording of model cards. The shipped pack is
`finance` (advice vs caution); `--behaviour DIR` points finsurg at any other, and a recipe
names the pack it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json, validation_message

DEFAULT_PACK = "finance"
MIN_TRAIN = 4
VERIFICATION_PER_CATEGORY = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(_Strict):
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


class AnswerPair(_Strict):
    """One question with a positive-behaviour answer and a negative-behaviour answer."""

    question: str = Field(min_length=1)
    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class AnswerSplits(_Strict):
    description: str = ""
    train: list[AnswerPair] = Field(min_length=1)
    tune: list[AnswerPair] = Field(min_length=1)
    heldout: list[AnswerPair] = Field(min_length=1)


class NeutralReply(_Strict):
    question: str = Field(min_length=1)
    reply: str = Field(min_length=1)


class NeutralReplies(_Strict):
    description: str = ""
    items: list[NeutralReply] = Field(min_length=1)


class OffTopicSplits(_Strict):
    """Conversations off the pack's topic: the topic condition learns from train, tuning costs on tune."""

    description: str = ""
    train: list[NeutralReply] = Field(min_length=MIN_TRAIN)
    tune: list[NeutralReply] = Field(min_length=1)
    heldout: list[NeutralReply] = Field(min_length=1)


class ProseSplits(_Strict):
    """On-topic prose that explains and does not advise: the on-topic capability cost."""

    description: str = ""
    tune: list[str] = Field(min_length=1)
    heldout: list[str] = Field(min_length=1)


class GenerationRules(_Strict):
    """Case-insensitive regular expressions that judge an answer: does it do the positive behaviour, or the
    negative one? The labels name each in reports and cards."""

    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)
    positive_label: str = "matches the positive rules"
    negative_label: str = "matches the negative rules"


class SystemPrompts(_Strict):
    """A plain system prompt for each direction: the prompting baseline steering is compared with."""

    positive: str = Field(min_length=1)
    negative: str = Field(min_length=1)


class CardWording(_Strict):
    positive_direction: str = "toward the positive behaviour (positive alpha)"
    negative_direction: str = "toward the negative behaviour (negative alpha)"
    example_prompt: str = "Hello! What can you help me with?"
    tags: list[str] = []


class Manifest(_Strict):
    name: str
    positive: str
    negative: str
    neutral: str
    keywords: list[str] = Field(min_length=1)
    continuations: Pair
    probes: list[str] = Field(min_length=1)
    tokens: Pair
    neutral_text: str = "neutral_text.json"
    # lm-eval tasks in tasks/, each with the metric that sums it up
    tasks: dict[str, str] = {}
    # the task whose two choices are (positive answer, negative answer): its log-odds is reported
    preference_task: str | None = None
    task_titles: dict[str, str] = {}
    verification_prompts: str | None = None
    surgery_prompts: list[str] = []
    card: CardWording = CardWording()
    # paired answers (train/tune/heldout) and neutral replies: what answer-behaviour directions need
    answers: str | None = None
    neutral_replies: str | None = None
    system_prompts: SystemPrompts | None = None
    # what conditional surgery needs: off-topic conversations, on-topic prose, and rules that judge answers
    off_topic: str | None = None
    topic_prose: str | None = None
    generation_rules: GenerationRules | None = None


@dataclass(frozen=True)
class Category:
    name: str
    train: list[str]
    heldout: list[str]


@dataclass(frozen=True)
class Pack:
    manifest: Manifest
    positive: Category
    negative: Category
    neutral: Category
    neutral_text: list[str]
    directory: Path
    source: str  # the built-in name, or the directory a user pack was read from

    @property
    def categories(self) -> list[Category]:
        return [self.positive, self.negative, self.neutral]

    @property
    def tasks_dir(self) -> Path:
        return self.directory / "tasks"

    def verification_prompts(self) -> list[str]:
        """The pack's verification prompts, else the first held-out prompts of each category."""
        if self.manifest.verification_prompts:
            prompts = _json(self.directory / self.manifest.verification_prompts)
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise FinsurgError(f"{self.directory / self.manifest.verification_prompts}: expected a list of strings")
            return prompts
        return [text for c in self.categories for text in c.heldout[:VERIFICATION_PER_CATEGORY]]

    def answer_pairs(self) -> AnswerSplits:
        """The pack's paired answers, split into train, tune and held-out; refused if absent or malformed."""
        if not self.manifest.answers:
            raise FinsurgError(f"behaviour pack {self.source} has no paired answers (manifest.json: answers)")
        path = self.directory / self.manifest.answers
        splits = _validated(path, AnswerSplits)
        seen: dict[str, str] = {}
        for split in ("train", "tune", "heldout"):
            for pair in getattr(splits, split):
                if pair.positive.strip() == pair.negative.strip():
                    raise FinsurgError(f"{path}: {split} question {pair.question!r} has the same answer twice")
                if seen.setdefault(pair.question, split) != split:
                    raise FinsurgError(
                        f"{path}: question {pair.question!r} is in both {seen[pair.question]} and {split}"
                    )
        return splits

    def neutral_reply_items(self) -> list[NeutralReply]:
        if not self.manifest.neutral_replies:
            raise FinsurgError(f"behaviour pack {self.source} has no neutral replies (manifest.json: neutral_replies)")
        return _validated(self.directory / self.manifest.neutral_replies, NeutralReplies).items

    def off_topic_splits(self) -> OffTopicSplits:
        """Off-topic conversations in disjoint splits; refused if the pack has none (the conditional route needs them)."""
        if not self.manifest.off_topic:
            raise FinsurgError(
                f"behaviour pack {self.source} has no off-topic conversations (manifest.json: off_topic), which the "
                "conditional route learns its topic condition from; add them or pass --route unconditional"
            )
        path = self.directory / self.manifest.off_topic
        splits = _validated(path, OffTopicSplits)
        seen: dict[str, str] = {}
        for split in ("train", "tune", "heldout"):
            for item in getattr(splits, split):
                if seen.setdefault(item.question, split) != split:
                    raise FinsurgError(
                        f"{path}: question {item.question!r} is in both {seen[item.question]} and {split}"
                    )
        return splits

    def topic_prose(self) -> ProseSplits | None:
        if not self.manifest.topic_prose:
            return None
        return _validated(self.directory / self.manifest.topic_prose, ProseSplits)

    def surgery_prompts(self) -> list[str]:
        return self.manifest.surgery_prompts or self.positive.heldout[:3]

    @classmethod
    def load(cls, spec: str | Path | None = None) -> Pack:
        """A built-in pack by name (default: finance) or a pack directory."""
        spec = DEFAULT_PACK if spec is None else spec
        if isinstance(spec, str) and spec in builtin_names():
            # the installed package is a real directory (setuptools), so the path stays valid
            return cls._read(Path(str(resources.files("finsurg") / "data" / "packs" / spec)), spec)
        directory = Path(spec)
        if not directory.is_dir():
            raise FinsurgError(
                f"behaviour pack not found: {spec} is neither a directory nor a built-in pack "
                f"({', '.join(builtin_names())})"
            )
        return cls._read(directory.resolve(), str(directory.resolve()))

    @classmethod
    def _read(cls, directory: Path, source: str) -> Pack:
        manifest = _validated(directory / "manifest.json", Manifest)
        categories = [_category(directory, name) for name in (manifest.positive, manifest.negative, manifest.neutral)]
        neutral_text = _json(directory / manifest.neutral_text)
        if not isinstance(neutral_text, list) or not neutral_text or not all(isinstance(t, str) for t in neutral_text):
            raise FinsurgError(f"{directory / manifest.neutral_text}: expected a non-empty list of strings")
        return cls(manifest, *categories, neutral_text=neutral_text, directory=directory, source=source)


def builtin_names() -> list[str]:
    root = resources.files("finsurg") / "data" / "packs"
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def _json(path: Path):
    return read_json(path, f"behaviour pack file not found: {path}")


def _validated(path: Path, model: type[BaseModel]):
    try:
        return model.model_validate(_json(path))
    except ValidationError as exc:
        raise FinsurgError(f"{path}: {validation_message(exc, path.name)}") from None


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
