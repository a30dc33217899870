"""What a pack of pairs alone leaves out, derived from its pairs: the question categories, keywords, logit-lens
probes and tokens, and the seed sweep's continuations.

The positive category is the pairs' questions (train and held-out by their split); the negative and neutral
categories are the shipped general prompts, so phase 1 contrasts the behaviour's questions with everyday ones.
"""

from __future__ import annotations

from collections import Counter

from finsurg.packs.manifest import AnswerSplits, Pair
from finsurg.packs.words import spoken

KEYWORDS = 12
TOKENS = 8
PROBES = 3
CONTINUATION_WORDS = 6


def keywords(splits: AnswerSplits, general: list[str]) -> list[str]:
    """Words the train questions use most that everyday prompts do not use."""
    common = {word for text in general for word in spoken(text)}
    counts = Counter(word for pair in splits.train for word in set(spoken(pair.question)) if word not in common)
    found = [word for word, _ in counts.most_common(KEYWORDS)]
    return found or [spoken(splits.train[0].question + " question")[0]]


def tokens(splits: AnswerSplits) -> Pair:
    """Words the positive answers use more than the negative ones, and the reverse, as leading-space tokens."""
    positive = Counter(word for pair in splits.train for word in set(spoken(pair.positive)))
    negative = Counter(word for pair in splits.train for word in set(spoken(pair.negative)))
    sides = []
    for mine, other, first in ((positive, negative, "positive"), (negative, positive, "negative")):
        lead = sorted(mine, key=lambda word: (other[word] - mine[word], word))[:TOKENS]
        fallback = [(getattr(pair, first).split() or ["yes"])[0] for pair in splits.train[:1]]
        sides.append([f" {word}" for word in (lead or fallback)])
    return Pair(positive=sides[0], negative=sides[1])


def probes(splits: AnswerSplits) -> list[str]:
    return [pair.question for pair in splits.train[:PROBES]]


def continuations(splits: AnswerSplits) -> Pair:
    """The first words of a few train answers on each side."""
    head = splits.train[:PROBES]
    return Pair(
        positive=[" ".join(pair.positive.split()[:CONTINUATION_WORDS]) for pair in head],
        negative=[" ".join(pair.negative.split()[:CONTINUATION_WORDS]) for pair in head],
    )
