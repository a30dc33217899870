"""Choosing between the routes: the topic condition learnt, the conditional route searched, both routes judged on
the same tune objectives, and the winner's and the loser's held-out figures and greedy answers reported side by side.

Splits never mix: probes learn from train, the search and the route choice use tune, and every figure
reported is measured on heldout.
"""

from __future__ import annotations

import torch

from finsurg import progress
from finsurg.analysis import condition
from finsurg.analysis.answers import Divergence, Measure, Perplexity
from finsurg.analysis.generations import ANSWER_TOKENS, UNCHANGED_TOKENS, greedy_answers, judge, unchanged
from finsurg.analysis.route import Costs, Point, pareto, reach, search_gated, winner
from finsurg.analysis.tune import TUNED_ALPHA, band_range, offsets_for
from finsurg.effects import effect
from finsurg.errors import FinsurgError
from finsurg.packs import OffTopicSplits, Pack
from finsurg.steer.arch import Architecture
from finsurg.steer.recipe import CONDITION_NAME, CONDITIONAL_FORMAT, Recipe, RecipeSpec


def choose_route(
    model,
    tokenizer,
    arch: Architecture,
    pack: Pack,
    plain: Recipe,
    direction: dict,
    scale: torch.Tensor,
    tune: Measure,
    heldout: Measure,
    off_topic: OffTopicSplits,
    options,
) -> tuple[Recipe, dict]:
    """The recipe of the route that wins at the budgets (or the one --route pins), and what the report says of both."""
    arch.grafting(arch.family)
    splits = pack.answer_pairs()
    prose = pack.topic_prose()
    depth = model.config.num_hidden_layers
    lowest, highest = reach(plain.layers, band_range(depth))
    layers = list(range(lowest, highest + 1))
    sequences = {
        "train_on": condition.on_topic(tokenizer, splits.train)
        + condition.user_turns(tokenizer, pack.positive.train + pack.negative.train),
        "train_off": condition.off_topic(tokenizer, off_topic.train)
        + condition.user_turns(tokenizer, pack.neutral.train),
        "heldout_on": condition.on_topic(tokenizer, splits.heldout),
        "heldout_off": condition.off_topic(tokenizer, off_topic.heldout),
    }
    skip = condition.shared_prefix([s for group in sequences.values() for s in group])
    with progress.bar(total=len(sequences), desc="topic condition: MLP inputs") as bar:
        tokens = {}
        for name, group in sequences.items():
            tokens[name] = condition.mlp_inputs(model, tokenizer, arch, group, layers, skip, options.batch_size)
            bar.update()
    opening = (  # none where a tokenizer without a chat template leaves nothing shared
        condition.mlp_inputs(model, tokenizer, arch, [sequences["train_on"][0][:skip]], layers, 0, options.batch_size)
        if skip
        else None
    )
    probes = condition.Probes(tokens["train_on"], tokens["train_off"], opening, options.seed)
    costs = Costs(
        tune,
        Divergence(model, tokenizer, arch, off_topic.tune, options.batch_size),
        Perplexity(model, tokenizer, arch, prose.tune, options.batch_size) if prose else None,
    )
    budgets = (options.off_topic_budget, options.prose_budget)
    alpha = plain.spec.default_alpha
    tuning = plain.spec.tuning
    unconditional = costs.point("unconditional", tuning.trial, plain.layers, tuning.strength, plain.surgery(alpha))
    points = search_gated(
        costs, direction, scale, probes, (lowest, highest), options.gate_trials, budgets, options.seed, plain.layers
    )
    gated = winner(points, budgets)
    route, reason = _route(options.route, unconditional, gated, budgets)
    recipe = plain if route == "unconditional" else _gated_recipe(gated, direction, scale, probes, plain, options)
    gated_recipe = None if gated is None else _gated_recipe(gated, direction, scale, probes, plain, options)
    chosen_layers = (gated or unconditional).layers
    report = {
        "chosen": route,
        "reason": reason,
        "flag": options.route,
        "budgets": {"off_topic_kl": budgets[0], "prose_perplexity_change": budgets[1]},
        "unconditional_tune": unconditional.row(),
        "conditional_tune": None if gated is None else gated.row(),
        "conditional_trials": [p.row() for p in points],
        "conditional_pareto": [p.row() for p in pareto(points)],
        "condition": {
            "read_at": "the MLP's normed input",
            "skipped_prefix_tokens": skip,
            "heldout": {
                str(k): v
                for k, v in condition.judged(
                    {k: probes[k] for k in chosen_layers}, tokens["heldout_on"], tokens["heldout_off"]
                ).items()
            },
            "open_shares": None
            if gated_recipe is None
            else condition.open_shares(gated_recipe.gates(), tokens["heldout_on"], tokens["heldout_off"]),
        },
    }
    del tokens, probes
    report["heldout"] = _heldout(model, tokenizer, arch, pack, heldout, off_topic, prose, plain, gated_recipe, options)
    return recipe, report


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
    contenders = [p for p in (unconditional, gated) if p is not None and p.within(*budgets)]
    if not contenders:
        return (
            "unconditional",
            "neither route stayed within both budgets; the unconditional route's own KL budget holds",
        )
    best = max(contenders, key=lambda p: p.two_sided)
    return best.route, f"the larger two-sided tune shift within both budgets ({best.two_sided:.2f})"


def _gated_recipe(point: Point, direction, scale, probes, plain: Recipe, options) -> Recipe:
    offsets = offsets_for(direction, scale, point.layers, 1.0)
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


def _heldout(model, tokenizer, arch, pack, heldout: Measure, off_topic, prose, plain, gated, options) -> dict:
    """Both routes on the held-out splits: shift, the three costs, and what greedy answers do."""
    questions = [pair.question for pair in pack.answer_pairs().heldout]
    others = [item.question for item in off_topic.heldout]
    off_kl = Divergence(model, tokenizer, arch, off_topic.heldout, options.batch_size)
    prose_cost = Perplexity(model, tokenizer, arch, prose.heldout, options.batch_size) if prose else None
    rules = pack.manifest.generation_rules
    base_answers = greedy_answers(model, tokenizer, arch, questions, ANSWER_TOKENS, batch_size=options.batch_size)
    base_others = greedy_answers(model, tokenizer, arch, others, UNCHANGED_TOKENS, batch_size=options.batch_size)
    rows = {"base": {"answers": _judged(tokenizer, base_answers, rules)}}
    for route, recipe in (("unconditional", plain), ("conditional", gated)):
        if recipe is None:
            continue
        rows[route] = {}
        for name, sign in (("steered", 1.0), ("conservative", -1.0)):
            surgery = recipe.surgery(sign * recipe.spec.default_alpha)
            shifts = heldout.shifts(surgery)
            answers = greedy_answers(model, tokenizer, arch, questions, ANSWER_TOKENS, surgery, options.batch_size)
            replies = greedy_answers(model, tokenizer, arch, others, UNCHANGED_TOKENS, surgery, options.batch_size)
            rows[route][name] = {
                "shift": effect(shifts, sign),
                "neutral_kl": heldout.kl(surgery),
                "off_topic_kl": off_kl(surgery),
                "prose_perplexity_change": None if prose_cost is None else prose_cost.change(surgery),
                "answers": _judged(tokenizer, answers, rules),
                "off_topic_unchanged": unchanged(base_others, replies),
            }
    rows["questions"] = {"on_topic": len(questions), "off_topic": len(others)}
    rows["tokens"] = {"answers": ANSWER_TOKENS, "unchanged": UNCHANGED_TOKENS}
    return rows


def _judged(tokenizer, answers: list[list[int]], rules) -> dict | None:
    """The share of answers each of the pack's phrase rules matches, each answer cut at its first end token."""
    if rules is None:
        return None
    texts = []
    for tokens in answers:
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return judge(texts, rules)
