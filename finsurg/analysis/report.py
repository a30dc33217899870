"""The markdown report of an analysis run."""

from __future__ import annotations

from finsurg.steer.finding_tables import (
    answers_table,
    dial_table,
    examples_table,
    figure,
    gate_sentence,
    heldout_table,
    routes_table,
)
from finsurg.steer.findings import Findings, Routes, Splits


def _dims(items: list[dict], n: int = 6) -> str:
    return ", ".join(f"{item['dim']} ({item['value']:+.2f})" for item in items[:n])


def render(results: dict, findings: Findings | None = None) -> str:
    names = results["categories"]
    pos, neg, neu = names["positive"], names["negative"], names["neutral"]
    recipe = results["recipe"]
    lines = [
        f"# finsurg analysis: {results['model']}",
        "",
        f"> {results['disclaimer']}",
        "",
        f"Behaviour pack `{results['pack']}`: {results['train_prompts']} train prompts per category "
        f"({pos}, {neg}, {neu}), pooling `{results['pool']}` ({results['pool_description']}).",
        "",
        "Where the pack's parts came from: "
        + "; ".join(f"{part}: {origin}" for part, origin in results.get("pack_sources", {}).items())
        + ".",
        "",
        "## Recipe",
        "",
        f"Steered layers {recipe['layers'][0]}–{recipe['layers'][-1]} ({results['band_reason']}), "
        f"default alpha {recipe['default_alpha']:g}, steering coefficient {recipe['steering']['coefficient']:.3g}.",
        "",
        "| dimension | coefficient | role |",
        "|---|---|---|",
        *[f"| {n['index']} | {n['coefficient']:+.4g} | {n['role']} |" for n in recipe["neurons"]],
        "",
        "## Massive-activation dimensions (excluded)",
        "",
        ", ".join(f"{dim} (peak {ratio}× the layer median)" for dim, ratio in results["massive_dims"].items())
        or "none",
        "",
        f"## Top dimensions per layer ({neg} − {pos}, by effect size)",
        "",
        "| layer | top by effect size | top by raw difference |",
        "|---|---|---|",
    ]
    key = f"{neg}_minus_{pos}"
    for row in results["features"]:
        lines.append(f"| {row['layer']} | {_dims(row[key]['top_effect'])} | {_dims(row[key]['top_raw'])} |")
    lines += [
        "",
        f"## Attention heads (final position → keywords, {pos} − {neu})",
        "",
        "| layer | head | difference |",
        "|---|---|---|",
        *[f"| {h['layer']} | {h['head']} | {h['difference']:+.4f} |" for h in results["heads"]["top"]],
        "",
        "## Logit lens",
        "",
        f"Probability of the {pos} and {neg} token groups, averaged over the probe prompts. "
        f"Layers before the first steered layer unchanged by surgery: {results['logit_lens']['unchanged_before_first_steered_layer']}.",
        "",
    ]
    lines += _dial(results.get("sweep", {}).get("rows", []), pos)
    if findings is not None:
        lines += behaviour_section(findings, recipe["default_alpha"])
    lines += ["", "## Plots", ""] + [f"![{name}](plots/{name})" for name in results["plots"]]
    lines += ["", "Phase timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["timings"].items()), ""]
    return "\n".join(lines)


def _dial(rows: list[dict], positive: str) -> list[str]:
    """The seed method's alpha sweep on the held-out prompts."""
    lines = [
        "## The dial (held-out prompts)",
        "",
        f"| alpha | {positive} preference | log-odds | neutral perplexity | change |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['alpha']:+g} | {row['preference']:.3f} | {row['log_odds']:+.3f} | "
            f"{row['perplexity']:.3f} | {row['perplexity_change']:+.1%} |"
        )
    return lines


def _answer_budgets(budgets) -> str:
    if budgets.repeated_4grams is None:
        return ""
    return (
        f", judged answers with at most {budgets.repeated_4grams:.1%} repeated 4-grams and at least "
        f"{budgets.addressed:.0%} taking up the question (the base's tune answers, within margins)"
    )


def behaviour_section(findings: Findings, alpha: float) -> list[str]:
    splits, tuning = findings.splits, findings.tuning
    chosen = tuning.chosen
    lines = ["", "## Answer behaviour: what users see, then directions, tuning and held-out effects", ""]
    if findings.routes is not None:
        lines += seen_section(findings.routes, findings)
    else:
        lines += [f"Route: unconditional ({findings.route_reason}).", ""]
    lines += [
        f"Paired answers: {splits.train} train (directions), {splits.tune} tune (search"
        + (f", the first {splits.tune} of {splits.tune_in_pack}" if (splits.tune_in_pack or 0) > splits.tune else "")
        + "), "
        f"{splits.heldout} held-out (every effect below); {splits.neutral_replies} neutral replies "
        f"({splits.neutral_replies_tuning} while tuning). Activations read at "
        f"{findings.positions.description}. Methods searched: "
        + "; ".join(f"`{name}`: {text}" for name, text in findings.methods.items())
        + ".",
        "",
        f"### Tuning (Optuna TPE, seed {tuning.seed}, {len(tuning.trials)} trials, KL budget {tuning.budget:g})",
        "",
        f"Chosen: trial {chosen.trial}, `{chosen.method}`, layers {chosen.layers[0]}–{chosen.layers[1]}, "
        f"strength {chosen.strength:g} (alpha {alpha:g}). The Pareto front, tune split:",
        "",
        "| trial | method | layers | strength | KL | shift at +s | shift at −s | two-sided |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in tuning.pareto:
        lines.append(
            f"| {row.trial} | {row.method} | {row.layers[0]}–{row.layers[1]} | {row.strength:g} | "
            f"{row.kl:.4f} | {figure(row.shift_up)} | {figure(row.shift_down)} | {figure(row.two_sided)} |"
        )
    if findings.routes is not None:
        lines += routes_section(findings.routes, splits)
    lines += ["", "### Held-out effects of the recipe (alpha ±3) beside the prompting baseline", ""] + heldout_table(
        findings.heldout
    )
    lines += ["", "### Single-dimension terms", "", findings.neuron_ablation.reason, ""]
    if findings.routes is None:
        lines += ["### Greedy answers to held-out questions", ""] + examples_table(findings.examples)
    return lines


def seen_section(routes: Routes, findings: Findings) -> list[str]:
    """The answers users read on held-out questions, first: judged shares, answers side by side, the dial."""
    heldout = routes.heldout
    lines = [
        "### What users see (held-out questions)",
        "",
        f"{heldout.questions.on_topic} on-topic questions the search never saw, answered by the base and by both "
        f"routes at alpha ±3 (this recipe: **{routes.chosen}**); answers of {heldout.tokens.answers} tokens judged "
        f"by the pack's phrase rules; {heldout.questions.off_topic} off-topic questions, unchanged where the first "
        f"{heldout.tokens.unchanged} tokens equal the base's.",
        "",
        *answers_table(heldout),
        "",
        "Greedy answers side by side:",
        "",
        *examples_table(findings.examples),
        "",
    ]
    if heldout.dial:
        lines += ["The dial: judged greedy answers at each alpha, both routes.", "", *dial_table(heldout), ""]
    return lines


def routes_section(routes: Routes, splits: Splits) -> list[str]:
    """The two routes: the topic condition, the conditional search, and both routes on held-out."""
    condition, budgets, heldout = routes.condition, routes.budgets, routes.heldout
    off_topic = splits.off_topic
    lines = [
        "",
        "### Routes: an offset everywhere, or gated by the topic condition",
        "",
        f"Chosen: **{routes.chosen}** ({routes.reason}; `--route {routes.flag}`). Budgets on the tune "
        f"splits: off-topic KL {budgets.off_topic_kl:g}, on-topic prose perplexity "
        f"+{budgets.prose_perplexity_change:.0%}{_answer_budgets(budgets)}. Off-topic conversations: {off_topic.train} train "
        f"(the condition), {off_topic.tune} tune (the search), {off_topic.heldout} held-out.",
        "",
        f"The condition is read at {condition.read_at}, after the {condition.skipped_prefix_tokens} tokens every "
        "conversation shares. Held-out AUROC of the probe at each layer of the band:",
        "",
        "| layer | per token | per conversation |",
        "|---|---|---|",
        *[
            f"| {layer} | {row.token_auroc:.3f} | {row.conversation_auroc:.3f} |"
            for layer, row in condition.heldout.items()
        ],
        "",
    ]
    if condition.open_shares is not None:
        shares = condition.open_shares
        lines += [gate_sentence(shares), ""]
    lines += ["Both routes' best points on the tune splits, then the conditional route's Pareto front:", ""]
    lines += [
        "| route | trial | layers | strength | gate shift | gate sharpness | off-topic KL | prose perplexity | "
        "shift at +s | shift at −s | steered: positive answers | conservative: negative answers | "
        "repeated 4-grams | addresses the question |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [routes.unconditional_tune] + ([routes.conditional_tune] if routes.conditional_tune else [])
    for row in rows + routes.conditional_pareto:
        lines.append(
            f"| {row.route} | {row.trial} | {row.layers[0]}–{row.layers[1]} | {row.strength:g} | "
            f"{figure(row.gate_shift, '+.2f')} | {figure(row.gate_sharpness, '.2f')} | {row.off_topic_kl:.4f} | "
            f"{figure(row.prose_perplexity_change, '+.1%')} | {row.shift_up:+.2f} | {row.shift_down:+.2f} | "
            f"{figure(row.steered_positive, '.0%')} | {figure(row.conservative_negative, '.0%')} | "
            f"{figure(row.repeated_4grams, '.1%')} | {figure(row.addressed, '.0%')} |"
        )
    lines += [
        "",
        f"Held-out, both routes at alpha ±3: the log-odds shift on {heldout.questions.on_topic} on-topic questions "
        "and the costs.",
        "",
        *routes_table(heldout),
    ]
    return lines
