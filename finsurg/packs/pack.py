"""Behaviour packs: everything one behaviour needs, in one data folder, or one file of pairs.

A pack is read from a built-in name (`finance`), a directory, or a file of paired answers (JSONL or JSON). Only
the pairs are required. Every other part comes from, in order: the file the manifest names (in the pack, or a
shipped default as `generic:NAME`), the pack's file of the usual name, what the pairs imply, or the shipped
generic defaults. `Pack.sources` says where each part came from, and a recipe names the pack it was made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ValidationError

from finsurg.errors import FinsurgError
from finsurg.jsonfile import read_json, validation_message
from finsurg.packs import derived
from finsurg.packs.manifest import (
    MIN_TRAIN,
    AnswerSplits,
    Manifest,
    NeutralReplies,
    NeutralReply,
    OffTopicSplits,
    ProseSplits,
)
from finsurg.packs.pairs import SPLIT_RULE, read_pairs

DEFAULT_PACK = "finance"
GENERIC = "generic:"
VERIFICATION_PER_CATEGORY = 2
PAIR_SUFFIXES = (".jsonl", ".json")
# manifest field -> (the pack's files of the usual name, the shipped default when the pack has none)
USUAL = {
    "answers": (("answers.json", "answers.jsonl", "pairs.jsonl"), None),
    "neutral_text": (("neutral_text.json",), "generic:neutral_text.json"),
    "neutral_replies": (("neutral_replies.json",), "generic:neutral_replies.json"),
    "off_topic": (("off_topic.json",), None),
    "topic_prose": (("topic_prose.json",), None),
    "verification_prompts": (("verification.json",), None),
}
GENERAL_PROMPTS = "generic:general.json"
EVERYDAY_CONVERSATIONS = "generic:off_topic.json"


@dataclass(frozen=True)
class Category:
    name: str
    train: list[str]
    heldout: list[str]


@dataclass(frozen=True)
class Pack:
    manifest: Manifest  # completed: what the pack left out is filled in, as `sources` says
    positive: Category
    negative: Category
    neutral: Category
    neutral_text: list[str]
    directory: Path
    source: str  # the built-in name, or the directory or pairs file a user pack was read from
    answers: AnswerSplits | None = None
    answers_split_here: bool = False  # the pairs file had no splits; they were derived by question
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest.name or Path(self.source).stem

    @property
    def disclaimer(self) -> str:
        return self.manifest.disclaimer

    @property
    def categories(self) -> list[Category]:
        return [self.positive, self.negative, self.neutral]

    @property
    def tasks_dir(self) -> Path:
        return self.directory / "tasks"

    @property
    def topic_data(self) -> bool:
        """Whether the pack has its own off-topic conversations: what the conditional route's condition learns."""
        return self.manifest.off_topic is not None

    def verification_prompts(self) -> list[str]:
        """The pack's verification prompts, else the first held-out prompts of each category."""
        if self.manifest.verification_prompts:
            path = self._path(self.manifest.verification_prompts)
            prompts = _json(path)
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise FinsurgError(f"{path}: expected a list of strings")
            return prompts
        return [text for c in self.categories for text in c.heldout[:VERIFICATION_PER_CATEGORY]]

    def answer_pairs(self) -> AnswerSplits:
        """The pack's paired answers, split into train, tune and held-out; refused if absent."""
        if self.answers is None:
            raise FinsurgError(f"behaviour pack {self.source} has no paired answers (manifest.json: answers)")
        return self.answers

    def neutral_reply_items(self) -> list[NeutralReply]:
        return _validated(self._path(self.manifest.neutral_replies), NeutralReplies).items

    def off_topic_splits(self) -> OffTopicSplits:
        """The pack's own off-topic conversations in disjoint splits; refused if it has none (the conditional
        route and the monitor's topic label need them)."""
        if not self.topic_data:
            raise FinsurgError(
                f"behaviour pack {self.source} has no off-topic conversations (manifest.json: off_topic), which the "
                "conditional route learns its topic condition from; add them or pass --route unconditional"
            )
        return _off_topic(self._path(self.manifest.off_topic))

    def everyday_splits(self) -> OffTopicSplits:
        """Conversations about something else: the pack's off-topic ones, else the shipped everyday pool."""
        return self.off_topic_splits() if self.topic_data else _off_topic(self._path(EVERYDAY_CONVERSATIONS))

    def topic_prose(self) -> ProseSplits | None:
        if not self.manifest.topic_prose:
            return None
        return _validated(self._path(self.manifest.topic_prose), ProseSplits)

    def surgery_prompts(self) -> list[str]:
        return self.manifest.surgery_prompts or self.positive.heldout[:3]

    def _path(self, reference: str) -> Path:
        return resolve(self.directory, reference)

    @classmethod
    def load(cls, spec: str | Path | None = None) -> Pack:
        """A built-in pack by name (default: finance), a pack directory, or a file of paired answers."""
        spec = DEFAULT_PACK if spec is None else spec
        if isinstance(spec, str) and spec in builtin_names():
            # the installed package is a real directory (setuptools), so the path stays valid
            return _read(Path(str(resources.files("finsurg") / "data" / "packs" / spec)), spec)
        path = Path(spec)
        if path.is_file() and path.suffix in PAIR_SUFFIXES:
            path = path.resolve()
            return _read(path.parent, str(path), Manifest(name=path.stem, answers=path.name))
        if not path.is_dir():
            raise FinsurgError(
                f"behaviour pack not found: {spec} is neither a directory, a file of pairs (.jsonl, .json) nor a "
                f"built-in pack ({', '.join(builtin_names())})"
            )
        return _read(path.resolve(), str(path.resolve()))


def builtin_names() -> list[str]:
    root = resources.files("finsurg") / "data" / "packs"
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir())


def generic_dir() -> Path:
    return Path(str(resources.files("finsurg") / "data" / "generic"))


def resolve(directory: Path, reference: str) -> Path:
    """A manifest's file reference: `generic:NAME` is a shipped default, anything else is in the pack."""
    if reference.startswith(GENERIC):
        return generic_dir() / reference.removeprefix(GENERIC)
    return directory / reference


def _read(directory: Path, source: str, manifest: Manifest | None = None) -> Pack:
    if manifest is None:
        has_manifest = (directory / "manifest.json").is_file()
        manifest = _validated(directory / "manifest.json", Manifest) if has_manifest else Manifest(name=directory.name)
    sources: dict[str, str] = {}
    files = {key: _located(directory, manifest, key, sources) for key in USUAL}
    answers, split_here = None, False
    if files["answers"]:
        answers, split_here = read_pairs(resolve(directory, files["answers"]))
        _check_pairs(answers, resolve(directory, files["answers"]))
        if split_here:
            sources["answers"] += f" ({SPLIT_RULE})"
    manifest = manifest.model_copy(update=files | _derived(manifest, answers, sources, source))
    categories = [_category_of(directory, manifest, side, answers, sources) for side in ("positive", "negative")]
    categories.append(_category_of(directory, manifest, "neutral", answers, sources))
    neutral_text = _json(resolve(directory, manifest.neutral_text))
    if not isinstance(neutral_text, list) or not neutral_text or not all(isinstance(t, str) for t in neutral_text):
        raise FinsurgError(f"{resolve(directory, manifest.neutral_text)}: expected a non-empty list of strings")
    return Pack(manifest, *categories, neutral_text, directory, source, answers, split_here, sources)


def _located(directory: Path, manifest: Manifest, key: str, sources: dict[str, str]) -> str | None:
    named = getattr(manifest, key)
    usual, default = USUAL[key]
    if named:
        sources[key] = named
        return named
    found = next((name for name in usual if (directory / name).is_file()), None)
    if found:
        sources[key] = found
        return found
    if default:
        sources[key] = f"{default} (shipped default)"
    return default


def _derived(manifest: Manifest, answers: AnswerSplits | None, sources: dict[str, str], source: str) -> dict:
    """The fields the manifest leaves out that the pairs imply."""
    makers = {
        "keywords": lambda: derived.keywords(answers, _general().train),
        "tokens": lambda: derived.tokens(answers),
        "probes": lambda: derived.probes(answers),
        "continuations": lambda: derived.continuations(answers),
    }
    filled = {}
    for key, make in makers.items():
        if getattr(manifest, key) is not None:
            continue
        if answers is None:
            raise FinsurgError(f"behaviour pack {source} has neither {key} (manifest.json) nor paired answers")
        filled[key] = make()
        sources[key] = "derived from the train pairs"
    return filled


def _category_of(directory: Path, manifest: Manifest, side: str, answers, sources: dict[str, str]) -> Category:
    named = getattr(manifest, side)
    if named:
        sources[side] = named
        return _category(resolve(directory, named if Path(named).suffix else f"{named}.json"))
    if side == "positive" and answers is not None:
        sources[side] = "derived: the pairs' questions (train and held-out splits)"
        return Category("questions", [p.question for p in answers.train], [p.question for p in answers.heldout])
    if side == "positive":
        raise FinsurgError("a behaviour pack needs paired answers or a positive question category (manifest.json)")
    sources[side] = f"{GENERAL_PROMPTS} (shipped default)"
    return _general()


@cache  # keywords, and the negative and neutral categories, read the same shipped prompts
def _general() -> Category:
    return _category(resolve(Path("."), GENERAL_PROMPTS))


def _check_pairs(splits: AnswerSplits, path: Path) -> None:
    seen: dict[str, str] = {}
    for split in ("train", "tune", "heldout"):
        for pair in getattr(splits, split):
            if pair.positive.strip() == pair.negative.strip():
                raise FinsurgError(f"{path}: {split} question {pair.question!r} has the same answer twice")
            if seen.setdefault(pair.question, split) != split:
                raise FinsurgError(f"{path}: question {pair.question!r} is in both {seen[pair.question]} and {split}")


def _off_topic(path: Path) -> OffTopicSplits:
    splits = _validated(path, OffTopicSplits)
    seen: dict[str, str] = {}
    for split in ("train", "tune", "heldout"):
        for item in getattr(splits, split):
            if seen.setdefault(item.question, split) != split:
                raise FinsurgError(f"{path}: question {item.question!r} is in both {seen[item.question]} and {split}")
    return splits


def _json(path: Path):
    return read_json(path, f"behaviour pack file not found: {path}")


def _validated(path: Path, model: type[BaseModel]):
    try:
        return model.model_validate(_json(path))
    except ValidationError as exc:
        raise FinsurgError(f"{path}: {validation_message(exc, path.name)}") from None


def _category(path: Path) -> Category:
    """{"train": [...], "heldout": [...]}, or a plain list whose last quarter is held out."""
    raw = _json(path)
    if isinstance(raw, list):
        cut = len(raw) - max(1, len(raw) // 4)
        raw = {"train": raw[:cut], "heldout": raw[cut:]}
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(key), list) and all(isinstance(t, str) for t in raw[key]) for key in ("train", "heldout")
    ):
        raise FinsurgError(f"{path}: expected train and heldout lists of strings")
    if len(raw["train"]) < MIN_TRAIN or not raw["heldout"]:
        raise FinsurgError(f"{path}: needs at least {MIN_TRAIN} train and 1 held-out prompt")
    overlap = set(raw["train"]) & set(raw["heldout"])
    if overlap:
        raise FinsurgError(f"{path}: a prompt is in both train and heldout: {sorted(overlap)[0]!r}")
    return Category(path.stem, list(raw["train"]), list(raw["heldout"]))
