"""What the analysis found about a recipe's behaviour, typed from where it is measured to where it is rendered.

The analysis builds these, writes them into `mech_interp_results.json` beside the recipe, and a variant's
surgery record carries their summary (`Findings.summary()`) to its model card. Every figure is measured on the
held-out split unless its name says tune.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from finsurg.effects import Effect


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrialRow(Finding):
    """One trial of the unconditional search, on the tune split."""

    trial: int
    method: str
    layers: list[int]  # first and last
    strength: float
    kl: float
    shift_up: float | None = None
    shift_down: float | None = None
    two_sided: float | None = None


class Tuning(Finding):
    budget: float
    trials: list[TrialRow] = []
    pareto: list[TrialRow] = []
    chosen: TrialRow
    seed: int | None = None


class HeldoutRow(Finding):
    """One row of the held-out table: the base, a steering at ±alpha, or a plain system prompt."""

    preference: float
    log_odds: float
    alpha: float | None = None
    shift: Effect | None = None
    kl: float | None = None
    system_prompt: str | None = None
    per_item: list[float] | None = None


class Example(Finding):
    question: str
    base: str
    steered: str
    conservative: str


class NeuronAblation(Finding):
    kept: bool
    reason: str
    terms: list[dict] = []
    added: dict[str, Effect] | None = None  # up, down
    kl_with_terms: float | None = None


class OffTopicCounts(Finding):
    train: int
    tune: int
    heldout: int


class Splits(Finding):
    train: int
    tune: int  # the tune pairs the search read
    heldout: int
    tune_in_pack: int | None = None  # the tune split's size, where the search read only its first `tune`
    neutral_replies: int
    neutral_replies_tuning: int
    off_topic: OffTopicCounts | None = None


class RoutePoint(Finding):
    """One route's measured surgery on the tune splits."""

    route: str
    trial: int
    layers: list[int]  # first and last
    strength: float
    gate_shift: float | None = None
    gate_sharpness: float | None = None
    off_topic_kl: float
    prose_perplexity_change: float | None = None
    shift_up: float
    shift_down: float
    two_sided: float
    steered_positive: float | None = None  # judged greedy answers to the tune questions
    conservative_negative: float | None = None
    repeated_4grams: float | None = None  # the larger of the two directions'
    addressed: float | None = None  # the smaller of the two directions'


class Auroc(Finding):
    token_auroc: float
    conversation_auroc: float


class OpenShares(Finding):
    """The share of held-out tokens whose gate opens past half: over on- and off-topic conversations, over the
    questions alone, and over the first answer tokens of on-topic conversations (overall and by position)."""

    on_topic: float
    off_topic: float
    questions: float | None = None
    first_answer_tokens: float | None = None
    by_answer_position: list[float] = []


class ConditionReport(Finding):
    read_at: str
    skipped_prefix_tokens: int
    heldout: dict[str, Auroc]  # by layer
    open_shares: OpenShares | None = None


class Judged(Finding):
    """The share of answers each of the pack's phrase rules matches."""

    positive: float
    negative: float


class AnswerQuality(Finding):
    """Whether greedy answers stay answers: the share of their 4-grams that repeat an earlier one, the share that
    take up the question's content words, and their perplexity under the base model."""

    repeated_4grams: float
    addressed: float
    base_perplexity: float | None = None


class RuleLabels(Finding):
    positive: str = "matches the positive rules"
    negative: str = "matches the negative rules"


class DialRow(Finding):
    """One alpha of a route's dial on the held-out questions: judged greedy answers and off-topic answers kept."""

    alpha: float
    answers: Judged | None = None
    quality: AnswerQuality
    off_topic_unchanged: float


class RouteHeldoutRow(Finding):
    shift: Effect
    neutral_kl: float
    off_topic_kl: float
    prose_perplexity_change: float | None = None
    answers: Judged | None = None  # greedy
    sampled: Judged | None = None
    quality: AnswerQuality | None = None
    off_topic_unchanged: float


class BaseAnswers(Finding):
    answers: Judged | None = None  # greedy
    sampled: Judged | None = None
    quality: AnswerQuality | None = None


class QuestionCounts(Finding):
    on_topic: int
    off_topic: int


class AnswerTokens(Finding):
    answers: int
    unchanged: int
    samples: int = 0  # sampled answers per question
    temperature: float | None = None


class RoutesHeldout(Finding):
    """Both routes on the held-out splits, each variant a row, beside the base's greedy answers."""

    base: BaseAnswers
    unconditional: dict[str, RouteHeldoutRow] = {}
    conditional: dict[str, RouteHeldoutRow] = {}
    questions: QuestionCounts
    tokens: AnswerTokens
    dial: dict[str, list[DialRow]] = {}  # by route
    labels: RuleLabels = RuleLabels()  # what the pack's phrase rules judge, in its own words


class Budgets(Finding):
    off_topic_kl: float
    prose_perplexity_change: float
    repeated_4grams: float | None = None  # the most a judged side's tune answers may repeat (the base's + margin)
    addressed: float | None = None  # the least share of them that may take up the question (the base's − margin)


class Routes(Finding):
    chosen: str
    reason: str
    flag: str
    budgets: Budgets
    unconditional_tune: RoutePoint
    conditional_tune: RoutePoint | None = None
    conditional_trials: list[RoutePoint] = []
    conditional_pareto: list[RoutePoint] = []
    condition: ConditionReport
    heldout: RoutesHeldout


class Positions(Finding):
    name: str
    description: str


class Findings(Finding):
    """The answer-behaviour phases: directions, tuning, routes, held-out effects and examples."""

    splits: Splits
    methods: dict[str, str]
    positions: Positions
    residual_norm: list[float]
    tuning: Tuning
    neuron_ablation: NeuronAblation
    heldout: dict[str, HeldoutRow]
    examples: list[Example]
    routes: Routes | None = None
    route_reason: str = ""  # why only the unconditional route was searched, where routes is None

    def summary(self) -> Findings:
        """What a variant's record keeps for its card: no per-item shifts, no trial lists."""
        heldout = {name: row.model_copy(update={"per_item": None}) for name, row in self.heldout.items()}
        routes = None
        if self.routes is not None:
            routes = self.routes.model_copy(update={"conditional_trials": [], "conditional_pareto": []})
        tuning = self.tuning.model_copy(update={"trials": [], "pareto": []})
        return self.model_copy(update={"heldout": heldout, "routes": routes, "tuning": tuning})
