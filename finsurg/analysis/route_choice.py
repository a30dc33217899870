"""Choosing between the routes: the topic condition learnt, the conditional route searched, both routes judged on
the same tune objectives, and the winner's and the loser's held-out figures and greedy answers reported side by side.

Splits never mix: probes learn from train, the search and the route choice use tune, and every figure
reported is measured on heldout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finsurg import progress
from finsurg.analysis import topic_probes
from finsurg.analysis.conditional_search import Costs, Gated, Point, pareto, reach, search_gated, winner
from finsurg.analysis.context import AnalysisContext
from finsurg.analysis.generations import ANSWER_TOKENS, UNCHANGED_TOKENS, Sampling
from finsurg.analysis.heldout_answers import HeldoutAnswers
from finsurg.analysis.judged_objective import AnswerObjective
from finsurg.analysis.measures import Measure
from finsurg.analysis.tune import TUNED_ALPHA, band_range, offsets_for
from finsurg.effects import effect
from finsurg.errors import FinsurgError
from finsurg.packs import OffTopicSplits
from finsurg.steer.findings import (
    AnswerTokens,
    BaseAnswers,
    Budgets,
    ConditionReport,
    QuestionCounts,
    RouteHeldoutRow,
    Routes,
    RoutesHeldout,
    RuleLabels,
)
from finsurg.steer.recipe import CONDITION_NAME, CONDITIONAL_FORMAT, Recipe, RecipeSpec

FIRST_ANSWER_TOKENS = 8  # the gate's open share is reported on this many first tokens of held-out answers
SAMPLING_TEMPERATURE = 0.7


@dataclass
class Unconditional:
    """What the unconditional search hands the route choice: its recipe, the tuned direction and the residual norm
    that scales it per layer, and the tune and held-out measures."""

    recipe: Recipe
    direction: dict
    scale: torch.Tensor
    tune: Measure
    heldout: Measure


@dataclass
class _ProbeTokens:
    """The MLP inputs the topic probes learn from (train) and are judged on (held-out), past the shared opening."""

    train_on: topic_probes.Tokens
    train_off: topic_probes.Tokens
    heldout_on: topic_probes.Tokens
    heldout_off: topic_probes.Tokens
    heldout_questions: topic_probes.Tokens
    heldout_first: topic_probes.Tokens  # the first answer tokens of held-out on-topic conversations
    opening: topic_probes.Tokens | None
    skip: int


@dataclass
class _Searched:
    """What the route search hands the held-out report: both routes' tune points, and the conditional recipe."""

    unconditional: Point
    points: list[Point]
    gated: Point | None
    recipe: Recipe | None
    condition: ConditionReport
    answer_limits: tuple[float, float] | None  # (most repeated 4-grams, least addressed share), where judged


def choose_route(
    ctx: AnalysisContext, plain: Unconditional, off_topic: OffTopicSplits, options, timings: dict[str, float]
) -> tuple[Recipe, Routes]:
    """The recipe of the route that wins at the budgets (or the one --route pins), and what the report says of both.
    `timings` gains the search's, the held-out report's and the dial's seconds."""
    prose = ctx.pack.topic_prose()
    budgets = (options.off_topic_budget, options.prose_budget)
    with progress.timed(timings, "conditional_search"):
        searched = _search(ctx, plain, off_topic, prose, options)
    route, reason = _route(options.route, searched.unconditional, searched.gated, budgets)
    with progress.timed(timings, "routes_heldout"):
        heldout, seen = _heldout(ctx, plain, off_topic, prose, searched.recipe, options)
    if options.dial and ctx.pack.manifest.generation_rules is not None:
        with progress.timed(timings, "dial"):
            recipes = {"unconditional": plain.recipe, "conditional": searched.recipe}
            dial = {name: seen.dial(recipe, options.dial) for name, recipe in recipes.items() if recipe is not None}
        heldout = heldout.model_copy(update={"dial": dial})
    limits = searched.answer_limits or (None, None)
    routes = Routes(
        chosen=route,
        reason=reason,
        flag=options.route,
        budgets=Budgets(
            off_topic_kl=budgets[0],
            prose_perplexity_change=budgets[1],
            repeated_4grams=limits[0],
            addressed=limits[1],
        ),
        unconditional_tune=searched.unconditional.row(),
        conditional_tune=None if searched.gated is None else searched.gated.row(),
        conditional_trials=[p.row() for p in searched.points],
        conditional_pareto=[p.row() for p in pareto(searched.points)],
        condition=searched.condition,
        heldout=heldout,
    )
    return (plain.recipe if route == "unconditional" else searched.recipe), routes


def _search(ctx: AnalysisContext, plain: Unconditional, off_topic: OffTopicSplits, prose, options) -> _Searched:
    """The topic condition learnt on train, the conditional route searched on tune, and the condition judged."""
    ctx.arch.grafting(ctx.arch.family)
    lowest, highest = reach(plain.recipe.layers, band_range(ctx.depth))
    tokens = _probe_tokens(ctx, off_topic, list(range(lowest, highest + 1)))
    probes = topic_probes.Probes(tokens.train_on, tokens.train_off, tokens.opening, options.seed)
    rules = ctx.pack.manifest.generation_rules
    tune_questions = [pair.question for pair in ctx.pairs().tune]
    judged = None if rules is None else AnswerObjective(ctx, tune_questions, rules)
    costs = Costs(plain.tune, ctx.divergence(off_topic.tune), ctx.perplexity(prose.tune) if prose else None, judged)
    budgets = (options.off_topic_budget, options.prose_budget)
    recipe, tuning = plain.recipe, plain.recipe.spec.tuning
    unconditional = costs.point(
        "unconditional", tuning.trial, recipe.layers, tuning.strength, recipe.surgery(recipe.spec.default_alpha)
    )
    gating = Gated(plain.direction, plain.scale, probes)
    points = search_gated(costs, gating, (lowest, highest), recipe.layers, budgets, options.gate_trials, options.seed)
    gated = winner(points, budgets)
    gated_recipe = None if gated is None else _gated_recipe(gated, plain, probes, options)
    condition = ConditionReport(
        read_at="the MLP's normed input",
        skipped_prefix_tokens=tokens.skip,
        heldout=topic_probes.judged(
            {k: probes[k] for k in (gated or unconditional).layers}, tokens.heldout_on, tokens.heldout_off
        ),
        open_shares=None
        if gated_recipe is None
        else topic_probes.open_shares(
            gated_recipe.gates(), tokens.heldout_on, tokens.heldout_off, tokens.heldout_questions, tokens.heldout_first
        ),
    )
    return _Searched(unconditional, points, gated, gated_recipe, condition, judged and judged.limits)


def _probe_tokens(ctx: AnalysisContext, off_topic: OffTopicSplits, layers: list[int]) -> _ProbeTokens:
    """On topic: the assistant's turns that answer the pack's train questions (from the prompt's last token, whose
    output is the answer's first token); off topic: the off-topic conversations and the neutral questions. The chat
    template's shared opening is a negative of its own (the gate stays shut)."""
    pack, tokenizer = ctx.pack, ctx.tokenizer
    splits = ctx.pairs()
    turns = topic_probes.with_answers(tokenizer, splits.train)
    sequences = {
        "train_on": [s for s, _ in turns],
        "train_off": topic_probes.off_topic(tokenizer, off_topic.train)
        + topic_probes.user_turns(tokenizer, pack.neutral.train),
        "heldout_on": topic_probes.on_topic(tokenizer, splits.heldout),
        "heldout_off": topic_probes.off_topic(tokenizer, off_topic.heldout),
    }
    skip = topic_probes.shared_prefix([s for group in sequences.values() for s in group])
    sequences["heldout_questions"] = topic_probes.user_turns(tokenizer, [pair.question for pair in splits.heldout])
    first = topic_probes.with_answers(tokenizer, splits.heldout, FIRST_ANSWER_TOKENS)
    skips = {name: skip for name in sequences} | {
        "train_on": [len(s) - count - 1 for s, count in turns],
        "heldout_first": [len(s) - count for s, count in first],
    }
    sequences["heldout_first"] = [s for s, _ in first]
    tokens = {}
    with progress.bar(total=len(sequences), desc="topic condition: MLP inputs") as bar:
        for name, group in sequences.items():
            tokens[name] = ctx.mlp_inputs(group, layers, skips[name])
            bar.update()
    # none where a tokenizer without a chat template leaves nothing shared
    opening = ctx.mlp_inputs([sequences["train_off"][0][:skip]], layers, 0) if skip else None
    return _ProbeTokens(**tokens, opening=opening, skip=skip)


def _route(flag: str, unconditional: Point, gated: Point | None, budgets) -> tuple[str, str]:
    if flag == "conditional":
        if gated is None:
            raise FinsurgError(
                f"no conditional trial stayed within the budgets (off-topic KL {budgets[0]:g}, on-topic prose "
                f"perplexity +{budgets[1]:.0%}); raise --gate-trials, --off-topic-budget or --prose-budget"
            )
        return "conditional", "pinned with --route conditional"
    if flag == "unconditional":
        return "unconditional", "pinned with --route unconditional"
    best = winner([p for p in (unconditional, gated) if p is not None], budgets)
    if best is None:
        return (
            "unconditional",
            "neither route stayed within both budgets; the unconditional route's own KL budget holds",
        )
    if best.reading is not None:
        return (
            best.route,
            f"the best judged two-sided share of tune answers within the budgets, to one standard error "
            f"({best.objective:.0%}), then the larger log-odds shift ({best.two_sided:.2f})",
        )
    return best.route, f"the larger two-sided tune shift within the budgets ({best.two_sided:.2f})"


def _gated_recipe(point: Point, searched: Unconditional, probes, options) -> Recipe:
    plain = searched.recipe
    offsets = offsets_for(searched.direction, searched.scale, point.layers, 1.0)
    gates = {layer: probes[layer].gate(point.shift, point.sharpness) for layer in point.layers}
    layers = point.layers
    spec = RecipeSpec(
        format=CONDITIONAL_FORMAT,
        description=f"Derived by finsurg analyze: {plain.spec.direction.method} directions from paired answers, "
        f"layers {layers[0]}-{layers[-1]}, gated by a topic condition learnt from the pack's on- and off-topic "
        f"conversations; strength and gate tuned on the tune split within off-topic KL {options.off_topic_budget:g} "
        f"and on-topic prose perplexity +{options.prose_budget:.0%}; alpha {TUNED_ALPHA:g} is the tuned point.",
        model=plain.spec.model,
        layers=layers,
        neurons=[],
        steering={"file": plain.spec.steering.file, "coefficient": point.strength / TUNED_ALPHA},
        default_alpha=TUNED_ALPHA,
        pack=plain.spec.pack,
        site=plain.spec.site,
        direction=plain.spec.direction,
        tuning={
            **plain.spec.tuning.model_dump(),
            "kl_budget": options.off_topic_budget,
            "trials": options.gate_trials,
            "trial": point.number,
            "strength": point.strength,
            "shift_up": point.shift_up,
            "shift_down": point.shift_down,
            "kl": point.off_topic_kl,
            "route": "conditional",
            "route_flag": options.route,
            "off_topic_budget": options.off_topic_budget,
            "prose_budget": options.prose_budget,
        },
        condition={
            "file": CONDITION_NAME,
            "thresholds": {layer: gate[0] for layer, gate in gates.items()},
            "sharpness": {layer: gate[1] for layer, gate in gates.items()},
        },
    )
    return Recipe(
        spec,
        offsets,
        {layer: probes[layer].direction for layer in layers},
        origin="finsurg analyze",
    )


def _heldout(
    ctx: AnalysisContext, plain: Unconditional, off_topic: OffTopicSplits, prose, gated: Recipe | None, options
) -> tuple[RoutesHeldout, HeldoutAnswers]:
    """Both routes on the held-out splits: what users see (judged greedy and sampled answers, their shape,
    off-topic answers kept), then shift and the three costs; and the answering that the dial goes on with."""
    questions = [pair.question for pair in ctx.pairs().heldout]
    sampling = Sampling(options.samples, SAMPLING_TEMPERATURE, options.seed) if options.samples else None
    seen = HeldoutAnswers(ctx, questions, [item.question for item in off_topic.heldout], sampling)
    off_kl = ctx.divergence(off_topic.heldout)
    prose_cost = ctx.perplexity(prose.heldout) if prose else None
    routes: dict[str, dict[str, RouteHeldoutRow]] = {"unconditional": {}, "conditional": {}}
    for route, recipe in (("unconditional", plain.recipe), ("conditional", gated)):
        if recipe is None:
            continue
        for name, sign in (("steered", 1.0), ("conservative", -1.0)):
            surgery = recipe.surgery(sign * recipe.spec.default_alpha)
            routes[route][name] = RouteHeldoutRow(
                **seen.figures(surgery),
                off_topic_unchanged=seen.kept(surgery),
                shift=effect(plain.heldout.shifts(surgery), sign),
                neutral_kl=plain.heldout.kl(surgery),
                off_topic_kl=off_kl(surgery),
                prose_perplexity_change=None if prose_cost is None else prose_cost.change(surgery),
            )
    rules = ctx.pack.manifest.generation_rules
    heldout = RoutesHeldout(
        labels=RuleLabels()
        if rules is None
        else RuleLabels(positive=rules.positive_label, negative=rules.negative_label),
        base=BaseAnswers(**seen.figures()),
        **routes,
        questions=QuestionCounts(on_topic=len(questions), off_topic=len(seen.others)),
        tokens=AnswerTokens(
            answers=ANSWER_TOKENS,
            unchanged=UNCHANGED_TOKENS,
            samples=options.samples,
            temperature=SAMPLING_TEMPERATURE if options.samples else None,
        ),
    )
    return heldout, seen
