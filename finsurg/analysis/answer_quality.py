"""Whether answers stay answers: how much of each answer repeats itself, whether it takes up the question's words,
and how likely the base model finds it.

A variant that hedges by looping on one phrase moves the judged shares and fails here. Each figure is computed on
answers cut at their first end token, beside the same figure for the base's answers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from finsurg.analysis.generations import cut, texts
from finsurg.analysis.measures import Batches, Scored
from finsurg.models.loading import prompt_ids
from finsurg.packs.words import content_words
from finsurg.steer.arch import Architecture
from finsurg.steer.findings import AnswerQuality

GRAM = 4


def repeated_share(tokens: Sequence[int], n: int = GRAM) -> float:
    """The share of an answer's n-grams that repeat an n-gram seen earlier in it (0 for answers shorter than n)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def addresses(question: str, answer: str) -> bool:
    """Whether the answer takes up at least one of the question's content words (true where the question has none)."""
    asked = content_words(question)
    return not asked or bool(asked & content_words(answer))


def shape(questions: Sequence[str], answers: Sequence[Sequence[int]], tokenizer) -> AnswerQuality:
    """Repetition and the question's words in the answer, with no forward pass."""
    cuts = [cut(tokens, tokenizer.eos_token_id) for tokens in answers]
    said = texts(tokenizer, answers)
    return AnswerQuality(
        repeated_4grams=sum(map(repeated_share, cuts)) / len(cuts),
        addressed=sum(addresses(q, text) for q, text in zip(questions, said)) / len(said),
    )


def quality(
    model, tokenizer, arch: Architecture, questions: Sequence[str], answers: Sequence[Sequence[int]]
) -> AnswerQuality:
    """The three figures of answers (token ids) to `questions`, the perplexity scored by the unsteered `model`."""
    scored = [
        Scored(prompt_ids(tokenizer, q), cut(tokens, tokenizer.eos_token_id)) for q, tokens in zip(questions, answers)
    ]
    scored = [item for item in scored if item.continuation]
    figures = shape(questions, answers, tokenizer)
    count = sum(len(item.continuation) for item in scored)
    if not count:
        return figures
    log_likelihood = sum(Batches(model, tokenizer, arch, scored, keep_streams=False).base)
    return figures.model_copy(update={"base_perplexity": math.exp(-log_likelihood / count)})
