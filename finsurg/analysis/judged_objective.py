"""What the route search maximises where the pack has phrase rules: greedy answers to the tune questions under a
surgery and under its mirror, judged as users would read them, with the shape figures that bound how far the
answers may drift from the base's.

Only the questions it is given are ever generated (the route choice gives it the tune split's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from finsurg.analysis.answer_quality import shape
from finsurg.analysis.generations import ANSWER_TOKENS, judge, texts
from finsurg.packs import GenerationRules
from finsurg.steer.surgery import Surgery

REPEAT_MARGIN = 0.02  # a variant's repeated-4-gram share may exceed the base's by this much
ADDRESSED_MARGIN = 0.05  # and its share of answers that take up the question may fall short of it by this much


@dataclass(frozen=True)
class Reading:
    """A surgery's judged answers: the steered side's positive share, the mirror's negative share, and the worse
    of the two sides' shape figures, over `questions` questions."""

    steered_positive: float
    conservative_negative: float
    repeated_4grams: float
    addressed: float
    questions: int

    @property
    def score(self) -> float:
        """The two-sided judged share: the weaker of the two sides."""
        return min(self.steered_positive, self.conservative_negative)

    @property
    def standard_error(self) -> float:
        """The score's binomial standard error: scores closer than this are a question or two apart."""
        return math.sqrt(self.score * (1.0 - self.score) / self.questions)


class AnswerObjective:
    """Judged greedy answers to fixed questions, measured against the unsteered model's on the same questions."""

    def __init__(self, ctx, questions: Sequence[str], rules: GenerationRules, tokens: int = ANSWER_TOKENS):
        self.ctx, self.questions, self.rules, self.tokens = ctx, list(questions), rules, tokens
        self.base_shape = self._side(None)[1]

    def _side(self, surgery: Surgery | None):
        answers = self.ctx.greedy(self.questions, self.tokens, surgery)
        return judge(texts(self.ctx.tokenizer, answers), self.rules), shape(self.questions, answers, self.ctx.tokenizer)

    def __call__(self, up: Surgery) -> Reading:
        (up_judged, up_shape), (down_judged, down_shape) = self._side(up), self._side(up.negated())
        return Reading(
            steered_positive=up_judged.positive,
            conservative_negative=down_judged.negative,
            repeated_4grams=max(up_shape.repeated_4grams, down_shape.repeated_4grams),
            addressed=min(up_shape.addressed, down_shape.addressed),
            questions=len(self.questions),
        )

    @property
    def limits(self) -> tuple[float, float]:
        """The most repetition and the least share of answers that take up the question a side may show."""
        return self.base_shape.repeated_4grams + REPEAT_MARGIN, self.base_shape.addressed - ADDRESSED_MARGIN

    def keeps_answers(self, reading: Reading) -> bool:
        """Whether both sides' answers stay within the margins of the base's."""
        most_repeated, least_addressed = self.limits
        return reading.repeated_4grams <= most_repeated and reading.addressed >= least_addressed
