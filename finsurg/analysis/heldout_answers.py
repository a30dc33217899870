"""What users see, on the held-out questions: each model's greedy and sampled answers judged by the pack's phrase
rules, whether its greedy answers stay answers, how many off-topic answers stay the base's, and the same along
the alpha dial."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from finsurg.analysis.answer_quality import quality, shape
from finsurg.analysis.generations import ANSWER_TOKENS, UNCHANGED_TOKENS, Sampling, judge, texts, unchanged
from finsurg.steer.findings import DialRow, Judged
from finsurg.steer.recipe import Recipe
from finsurg.steer.surgery import Surgery


@dataclass
class HeldoutAnswers:
    """The held-out questions (on topic) and off-topic questions, answered by the base once and then per surgery."""

    ctx: object  # AnalysisContext
    questions: Sequence[str]
    others: Sequence[str]
    sampling: Sampling | None = None
    base_others: list[list[int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base_others = self.ctx.greedy(self.others, UNCHANGED_TOKENS)

    def judged(self, answers: list[list[int]]) -> Judged | None:
        rules = self.ctx.pack.manifest.generation_rules
        return None if rules is None else judge(texts(self.ctx.tokenizer, answers), rules)

    def figures(self, surgery: Surgery | None = None) -> dict:
        """Judged greedy and sampled answers and the greedy answers' shape, under the surgery (None: the base)."""
        ctx = self.ctx
        greedy = ctx.greedy(self.questions, ANSWER_TOKENS, surgery)
        sampled = None
        if self.sampling is not None and self.sampling.samples > 0:
            drawn = ctx.greedy(self.questions, ANSWER_TOKENS, surgery, self.sampling)
            sampled = self.judged(drawn)
        return {
            "answers": self.judged(greedy),
            "sampled": sampled,
            "quality": quality(ctx.model, ctx.tokenizer, ctx.arch, self.questions, greedy),
        }

    def kept(self, surgery: Surgery) -> float:
        """The share of off-topic answers whose first tokens stay the base's."""
        return unchanged(self.base_others, self.ctx.greedy(self.others, UNCHANGED_TOKENS, surgery))

    def dial(self, recipe: Recipe, alphas: Sequence[float]) -> list[DialRow]:
        """The recipe at each alpha, both ways: judged greedy answers, their shape, and off-topic answers kept."""
        rows = []
        for alpha in sorted({sign * abs(a) for a in alphas for sign in (-1.0, 1.0)}):
            surgery = recipe.surgery(alpha)
            greedy = self.ctx.greedy(self.questions, ANSWER_TOKENS, surgery)
            rows.append(
                DialRow(
                    alpha=alpha,
                    answers=self.judged(greedy),
                    quality=shape(self.questions, greedy, self.ctx.tokenizer),
                    off_topic_unchanged=self.kept(surgery),
                )
            )
        return rows
