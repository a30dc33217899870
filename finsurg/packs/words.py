"""The words a question or an answer is about: what derived keywords and answer checks compare."""

from __future__ import annotations

import re

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# function words long enough to pass the length rule: they say nothing about what was asked
STOPWORDS = frozenset(
    "about above after again also been before being could does doing during each from have having here into "
    "just like more most much must only other over same should some such than that their them then there these "
    "they this those through under until very want what when where which while will with would your yours".split()
)


def spoken(text: str) -> list[str]:
    """Lower-cased words of four letters or more that are not function words, in order."""
    words = (word.removesuffix("'s") for word in WORD.findall(text.lower()))
    return [word for word in words if len(word) >= 4 and word not in STOPWORDS]


def content_words(text: str) -> set[str]:
    """The text's spoken words, a plural's final s dropped."""
    return {word.removesuffix("s") for word in spoken(text)}
