"""The pack's conversations with the monitor's labels, per split, rendered as the monitor reads them.

`topic`: on-topic conversations (a question alone, and with each of its answers) against off-topic ones.
`behaviour`: a question with its positive-behaviour answer against the same question with its negative one,
and against off-topic exchanges (a reply about something else does not do the behaviour).
A bundle's monitor has both labels per pack, named `finance_topic`, `finance_behaviour`, ...
Splits never mix: the probes learn from train, thresholds come from tune, figures from held-out.
"""

from __future__ import annotations

from dataclasses import dataclass

from finsurg.errors import FinsurgError
from finsurg.monitor.conversations import exchange, render, user_turn
from finsurg.packs import Pack


@dataclass
class Labelled:
    """Rendered texts: (positives, negatives) for each label, by label name."""

    sets: dict[str, tuple[list[str], list[str]]]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.sets)

    def __getitem__(self, label: str) -> tuple[list[str], list[str]]:
        return self.sets[label]

    def counts(self) -> dict[str, int]:
        return {
            f"{label}_{side}": len(texts[i])
            for label, texts in self.sets.items()
            for i, side in enumerate(("pos", "neg"))
        }


def require_data(pack: Pack, recipe_origin: str) -> None:
    """One line that says how to get probes, where the recipe's pack cannot teach them."""
    if pack.answers is None:
        raise FinsurgError(
            f"recipe {recipe_origin} carries no monitor probes and its pack {pack.source} has no paired answers "
            "(manifest.json: answers) to learn them from: add them to the pack and pass the recipe again"
        )


def labelled(pack: Pack, split: str, tokenizer) -> Labelled:
    """`topic` and `behaviour`; `topic` only where the pack has its own off-topic conversations. Off-topic
    exchanges are the pack's own, else the shipped everyday pool (a negative of `behaviour` only)."""
    pairs = getattr(pack.answer_pairs(), split)
    off = getattr(pack.everyday_splits(), split)
    off_exchanges = [exchange(item.question, item.reply) for item in off]

    def texts(conversations):
        return [render(tokenizer, c) for c in conversations]

    behaviour = (
        texts([exchange(p.question, p.positive) for p in pairs]),
        texts([exchange(p.question, p.negative) for p in pairs] + off_exchanges),
    )
    if not pack.topic_data:
        return Labelled({"behaviour": behaviour})
    on_conversations = _pair_conversations(pairs)
    off_conversations = [user_turn(item.question) for item in off] + off_exchanges
    if split != "tune":  # the pack's prompt categories have train and held-out only
        on_conversations += [user_turn(q) for q in getattr(pack.positive, split) + getattr(pack.negative, split)]
        off_conversations += [user_turn(q) for q in getattr(pack.neutral, split)]
    return Labelled({"topic": (texts(on_conversations), texts(off_conversations)), "behaviour": behaviour})


def bundle_labelled(packs: dict[str, Pack], split: str, tokenizer) -> Labelled:
    """A bundle's labels, `NAME_topic` and `NAME_behaviour` per pack: each pack's own, with every other pack's
    conversations added to its negatives (one topic's conversation is off another's topic)."""
    own = {name: labelled(pack, split, tokenizer) for name, pack in packs.items()}
    conversations = {name: _own(pack, split, tokenizer) for name, pack in packs.items()}
    sets = {}
    for name, mine in own.items():
        others = list(dict.fromkeys(t for other, texts in conversations.items() if other != name for t in texts))
        for label, (positive, negative) in mine.sets.items():
            taken = set(positive)
            sets[f"{name}_{label}"] = (positive, negative + [t for t in others if t not in taken])
    return Labelled(sets)


def _own(pack: Pack, split: str, tokenizer) -> list[str]:
    """A pack's own conversations, rendered."""
    return [render(tokenizer, c) for c in _pair_conversations(getattr(pack.answer_pairs(), split))]


def _pair_conversations(pairs) -> list:
    """Each question alone, and with each of its answers."""
    conversations = [user_turn(p.question) for p in pairs]
    return conversations + [exchange(p.question, answer) for p in pairs for answer in (p.positive, p.negative)]
