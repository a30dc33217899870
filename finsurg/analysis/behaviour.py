"""Steering that is judged by the answers it changes: directions from paired answers, a tuned
strength under a capability budget, and effects reported on held-out items beside a prompting baseline.

Splits never mix: directions are read on `train`, the search runs on `tune`, and every effect the
report states is measured on `heldout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from finsurg import progress
from finsurg.analysis import directions as methods
from finsurg.analysis.context import AnalysisContext
from finsurg.analysis.measures import Batches, Measure, answer_items, margins
from finsurg.analysis.route_choice import Unconditional, choose_route
from finsurg.analysis.tune import TUNED_ALPHA, search
from finsurg.effects import effect, preference
from finsurg.models.loading import encode, hf_greedy
from finsurg.packs import Pack
from finsurg.steer.arch import Architecture
from finsurg.steer.findings import (
    Example,
    Findings,
    HeldoutRow,
    NeuronAblation,
    OffTopicCounts,
    Positions,
    Splits,
    Tuning,
)
from finsurg.steer.hooks import offsets_added
from finsurg.steer.recipe import RECIPE_FORMAT, STEERING_NAME, Recipe, RecipeSpec
from finsurg.steer.surgery import Surgery


def reply_split(replies: list) -> tuple[list, list]:
    """Neutral replies for tuning and for the held-out report: halves, disjoint when there are two or more."""
    half = max(1, len(replies) // 2)
    return replies[:half], replies[half:] or replies


EXAMPLES = 3
EXAMPLE_TOKENS = 40


@dataclass
class Steered:
    """The tuned recipe, what the analysis found on the way, and where the time went."""

    recipe: Recipe
    findings: Findings
    timings: dict[str, float]


def steer_by_answers(ctx: AnalysisContext, seed_recipe: Recipe, seed_direction: torch.Tensor, options) -> Steered:
    """The tuned recipe, and everything the report says about how it was found and what it does.

    `options` is the analysis's TuneOptions.
    """
    pack = ctx.pack
    splits = ctx.pairs()
    tune_replies, heldout_replies = reply_split(pack.neutral_reply_items())
    off_topic, route_reason = _off_topic(pack, ctx.arch, options.route)
    timings: dict[str, float] = {}
    with progress.timed(timings, "contrast"):
        candidates, scale = _candidates(ctx, splits.train, seed_direction, options)
    with progress.timed(timings, "tuning"):
        progress.say("phase 7: measuring the unsteered model on the tune split")
        tune = ctx.measure(splits.tune, tune_replies)
        found = search(tune, candidates, scale, ctx.depth, options.trials, options.kl_budget, options.seed)
    chosen = found.chosen()
    vectors = {layer: (scale[layer] * candidates[chosen.method][layer].double()).float() for layer in chosen.layers}
    recipe = _tuned_recipe(chosen, vectors, [], seed_recipe, pack, options)
    with progress.timed(timings, "neuron_ablation"):
        ablation = _neuron_ablation(tune, recipe, seed_recipe, chosen.items, options.kl_budget)
        if ablation.kept:
            recipe = _tuned_recipe(chosen, vectors, seed_recipe.spec.neurons, seed_recipe, pack, options)
    heldout = ctx.measure(splits.heldout, heldout_replies)
    routes = None
    if off_topic is not None:
        searched = Unconditional(recipe, candidates[chosen.method], scale, tune, heldout)
        recipe, routes = choose_route(ctx, searched, off_topic, options, timings)
    with progress.timed(timings, "heldout"):
        progress.say("phase 8: held-out effects and the prompting baseline")
        effects = _heldout_effects(ctx, heldout, recipe, splits.heldout)
    with progress.timed(timings, "examples"):
        examples = _examples(ctx, recipe, splits.heldout[:EXAMPLES])
    findings = Findings(
        splits=Splits(
            train=len(splits.train),
            tune=len(splits.tune),
            tune_in_pack=len(pack.answer_pairs().tune),
            heldout=len(splits.heldout),
            neutral_replies=len(heldout_replies),
            neutral_replies_tuning=len(tune_replies),
            off_topic=None if off_topic is None else _counts(off_topic),
        ),
        methods={name: methods.METHODS[name] for name in candidates},
        positions=Positions(name=options.positions, description=methods.POSITIONS[options.positions]),
        residual_norm=[round(float(v), 4) for v in scale],
        tuning=Tuning(
            budget=options.kl_budget,
            trials=[t.row() for t in found.trials],
            pareto=[t.row() for t in found.pareto()],
            chosen=chosen.row(),
            seed=options.seed,
        ),
        neuron_ablation=ablation,
        heldout=effects,
        examples=examples,
        routes=routes,
        route_reason=route_reason,
    )
    return Steered(recipe, findings, timings)


def _counts(off_topic) -> OffTopicCounts:
    return OffTopicCounts(train=len(off_topic.train), tune=len(off_topic.tune), heldout=len(off_topic.heldout))


def _off_topic(pack: Pack, arch: Architecture, route: str):
    """The off-topic conversations the conditional route needs, or none and why: refused when --route conditional
    cannot have them; none when auto finds no route (the pack has none, or the family has no graft)."""
    if route == "conditional":
        arch.grafting(arch.family)
        return pack.off_topic_splits(), ""
    if route == "unconditional":
        return None, "--route unconditional"
    if not pack.topic_data:
        return None, "auto: the pack has no off-topic conversations of its own, which the topic condition learns from"
    if arch.graft is None:
        return None, f"auto: {arch.graft_refused or arch.family + ' has no graft route'}"
    return pack.off_topic_splits(), ""


def _candidates(ctx: AnalysisContext, train, seed_direction, options) -> tuple[dict[str, dict], torch.Tensor]:
    """Phase 6: each direction method's per-layer unit directions, and the residual norm that scales them."""
    with progress.bar(total=2 * len(train), desc="phase 6: answer contrast (train)") as bar:
        contrast = methods.read_contrast(
            ctx.model, ctx.tokenizer, ctx.arch, train, options.positions, ctx.batch_size, bar.update
        )
    candidates = {"caa": methods.caa(contrast), "pca": methods.pca(contrast), "seed": seed_direction}
    if options.method != "auto":
        candidates = {options.method: candidates[options.method]}
    return candidates, contrast.residual_norm()


def _tuned_recipe(chosen, vectors, neurons, seed_recipe: Recipe, pack: Pack, options) -> Recipe:
    """The chosen trial as a recipe whose default alpha is the tuned strength."""
    layers = chosen.layers
    spec = RecipeSpec(
        format=RECIPE_FORMAT,
        description=f"Derived by finsurg analyze: {chosen.method} directions from paired answers, layers "
        f"{layers[0]}-{layers[-1]}, strength tuned on the tune split within KL {options.kl_budget:g}; alpha "
        f"{TUNED_ALPHA:g} is the tuned point.",
        model=seed_recipe.spec.model,
        layers=layers,
        neurons=list(neurons),
        steering={"file": STEERING_NAME, "coefficient": chosen.strength / TUNED_ALPHA},
        default_alpha=TUNED_ALPHA,
        pack=pack.source,
        site=seed_recipe.spec.site,
        direction={"method": chosen.method, "positions": options.positions},
        tuning={
            "kl_budget": options.kl_budget,
            "trials": options.trials,
            "seed": options.seed,
            "trial": chosen.number,
            "strength": chosen.strength,
            "shift_up": chosen.shift_up,
            "shift_down": chosen.shift_down,
            "kl": chosen.kl,
            "split": "tune",
            "route_flag": options.route,
        },
    )
    return Recipe(spec, vectors, origin="finsurg analyze")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _neuron_ablation(
    tune: Measure, recipe: Recipe, seed_recipe: Recipe, without: dict, budget: float
) -> NeuronAblation:
    """Keep the seed's single-dimension terms only if adding them moves the tune split their stated way.

    "Moves" means the 95% bootstrap interval of the per-item added shift excludes zero, both ways,
    and the cost with them stays within the budget.
    """
    if not seed_recipe.spec.neurons:
        return NeuronAblation(kept=False, reason="the seed recipe has no single-dimension terms")
    alpha = recipe.spec.default_alpha
    unit = torch.zeros(seed_recipe.spec.model.hidden_size)
    for neuron in seed_recipe.spec.neurons:
        unit[neuron.index] += neuron.coefficient
    added, costs = {}, []
    for sign in (1.0, -1.0):
        with_terms = Surgery.of(
            {layer: value + sign * alpha * unit for layer, value in recipe.offsets(sign * alpha).items()}
        )
        shifts = tune.shifts(with_terms)
        added[sign] = effect([w - wo for w, wo in zip(shifts, without[sign])], sign)  # the chosen trial's items
        costs.append(tune.kl(with_terms))
    up, down = added[1.0], added[-1.0]
    moved = up.ci95[0] > 0 and down.ci95[1] < 0
    cost = max(costs)
    kept = moved and cost <= budget
    verdict = (
        "both their stated way and within the KL budget, kept"
        if kept
        else f"but the cost would be {cost:.3f}, over the budget {budget:g}, dropped"
        if moved
        else "not clearly their stated way (an interval includes zero or points the other way), dropped"
    )
    reason = (
        f"adding them moved the tune split's log-odds by {up.mean:+.3f} [{up.ci95[0]:+.3f}, {up.ci95[1]:+.3f}] "
        f"at alpha +{alpha:g} and {down.mean:+.3f} [{down.ci95[0]:+.3f}, {down.ci95[1]:+.3f}] at alpha "
        f"-{alpha:g}: {verdict}"
    )
    return NeuronAblation(
        kept=kept,
        reason=reason,
        terms=[n.model_dump() for n in seed_recipe.spec.neurons],
        added={"up": up, "down": down},
        kl_with_terms=cost,
    )


def _heldout_effects(ctx: AnalysisContext, heldout: Measure, recipe: Recipe, pairs) -> dict[str, HeldoutRow]:
    alpha = recipe.spec.default_alpha
    base = heldout.base_margins
    rows = {"base": HeldoutRow(preference=preference(base), log_odds=_mean(base), kl=0.0)}
    for name, sign in (("steered", 1.0), ("conservative", -1.0)):
        surgery = recipe.surgery(sign * alpha)
        shifts = heldout.shifts(surgery)
        after = [b + s for b, s in zip(base, shifts)]
        rows[name] = HeldoutRow(
            alpha=sign * alpha,
            preference=preference(after),
            log_odds=_mean(after),
            shift=effect(shifts, sign),
            kl=heldout.kl(surgery),
            per_item=shifts,
        )
    prompts = ctx.pack.manifest.system_prompts
    if prompts is not None:
        for name, sign, system in (
            ("prompt_positive", 1.0, prompts.positive),
            ("prompt_negative", -1.0, prompts.negative),
        ):
            items = answer_items(ctx.tokenizer, pairs, system)
            after = margins(Batches(ctx.model, ctx.tokenizer, ctx.arch, items, ctx.batch_size).base)
            shifts = [a - b for a, b in zip(after, base)]
            rows[name] = HeldoutRow(
                system_prompt=system,
                preference=preference(after),
                log_odds=_mean(after),
                shift=effect(shifts, sign),
                per_item=shifts,
            )
    return rows


def _examples(ctx: AnalysisContext, recipe: Recipe, pairs) -> list[Example]:
    """Greedy answers to a few held-out questions: base, steered and conservative side by side."""
    alpha = recipe.spec.default_alpha
    examples = []
    for pair in pairs:
        ids = encode(ctx.tokenizer, pair.question)
        row = {"question": pair.question}
        for name, sign in (("base", 0.0), ("steered", 1.0), ("conservative", -1.0)):
            with offsets_added(ctx.model, recipe.surgery(sign * alpha) if sign else Surgery(), ctx.arch):
                tokens = hf_greedy(ctx.model, ids, EXAMPLE_TOKENS)
            row[name] = ctx.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        examples.append(Example(**row))
    return examples
