"""Markdown tables of effects: shifts with their intervals, the held-out table, greedy answers side by side."""

from __future__ import annotations

from finsurg.effects import Effect
from finsurg.steer.findings import Example, HeldoutRow, Judged, OpenShares, RoutesHeldout


def cells(result: Effect | None) -> tuple[str, str]:
    """Table cells for an effect: 'Δ [95% CI]' and the wrong-way share ('—' when there is none)."""
    if result is None:
        return "—", "—"
    low, high = result.ci95
    return f"{result.mean:+.2f} [{low:+.2f}, {high:+.2f}]", f"{result.wrong_way:.0%}"


def shift_table(shifts: dict[str, Effect]) -> list[str]:
    """Markdown rows: each run's shift from the base with its interval and wrong-way share."""
    lines = ["| run | Δ log-odds [95% CI] | wrong way | items |", "|---|---|---|---|"]
    for name, result in shifts.items():
        delta, wrong = cells(result)
        lines.append(f"| {name} | {delta} | {wrong} | {result.items} |")
    return lines


def heldout_table(heldout: dict[str, HeldoutRow]) -> list[str]:
    """The held-out table: base, each steering and each system prompt, shift with its interval."""
    lines = [
        "| | preference | mean log-odds | Δ log-odds [95% CI] | wrong way | KL on neutral replies |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in heldout.items():
        delta, wrong = cells(row.shift)
        label = f"{name} (alpha {row.alpha:+g})" if row.alpha is not None else name.replace("_", " ")
        kl = f"{row.kl:.4f}" if row.kl is not None else "—"
        lines.append(f"| {label} | {row.preference:.0%} | {row.log_odds:+.2f} | {delta} | {wrong} | {kl} |")
    return lines


def examples_table(examples: list[Example]) -> list[str]:
    """Greedy answers side by side: question, base, steered, conservative."""
    lines = ["| question | base | steered | conservative |", "|---|---|---|---|"]
    for row in examples:
        texts = [
            text.replace("|", "/").replace("\n", " ")
            for text in (row.question, row.base, row.steered, row.conservative)
        ]
        lines.append("| " + " | ".join(texts) + " |")
    return lines


def answers_table(heldout: RoutesHeldout) -> list[str]:
    """What users see on the held-out questions: each model's judged greedy and sampled answers, whether its greedy
    answers stay answers, and how many off-topic answers stay the base's."""
    tokens, plus, minus = heldout.tokens, heldout.labels.positive, heldout.labels.negative
    sampled = f"{tokens.samples} samples at T {tokens.temperature:g}" if tokens.samples else "sampled"
    lines = [
        f"| model | {plus} | {minus} | {plus}, {sampled} | {minus}, {sampled} "
        "| repeated 4-grams | addresses the question | perplexity under the base | off-topic answers unchanged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("base", heldout.base, None)]
    for route, variants in (("unconditional", heldout.unconditional), ("conditional", heldout.conditional)):
        rows += [(f"{route} {name}", row, row.off_topic_unchanged) for name, row in variants.items()]
    for label, row, kept in rows:
        quality = row.quality
        lines.append(
            f"| {label} | {_share(row.answers, 'positive')} | {_share(row.answers, 'negative')} | "
            f"{_share(row.sampled, 'positive')} | {_share(row.sampled, 'negative')} | "
            f"{figure(quality and quality.repeated_4grams, '.0%')} | {figure(quality and quality.addressed, '.0%')} | "
            f"{figure(quality and quality.base_perplexity, '.2f')} | {figure(kept, '.0%')} |"
        )
    return lines


def dial_table(heldout: RoutesHeldout) -> list[str]:
    """Each route's judged greedy answers along the alpha dial."""
    lines = [
        f"| route | alpha | {heldout.labels.positive} | {heldout.labels.negative} | repeated 4-grams | addresses the question "
        "| off-topic answers unchanged |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, rows in heldout.dial.items():
        for row in rows:
            lines.append(
                f"| {route} | {row.alpha:+g} | {_share(row.answers, 'positive')} | {_share(row.answers, 'negative')} | "
                f"{row.quality.repeated_4grams:.0%} | {row.quality.addressed:.0%} | {row.off_topic_unchanged:.0%} |"
            )
    return lines


def routes_table(heldout: RoutesHeldout) -> list[str]:
    """Both routes on the held-out splits: the log-odds shift and the costs."""
    lines = [
        "| route | variant | Δ log-odds [95% CI] | wrong way | off-topic KL | neutral KL | on-topic prose perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for route, rows in (("unconditional", heldout.unconditional), ("conditional", heldout.conditional)):
        for name, row in rows.items():
            delta, wrong = cells(row.shift)
            prose = "—" if row.prose_perplexity_change is None else f"{row.prose_perplexity_change:+.1%}"
            lines.append(
                f"| {route} | {name} | {delta} | {wrong} | {row.off_topic_kl:.4f} | {row.neutral_kl:.4f} | {prose} |"
            )
    return lines


def gate_sentence(shares: OpenShares) -> str:
    """Where the tuned gate opens past half, on held-out tokens."""
    text = (
        f"The tuned gate opens past half on {shares.on_topic:.0%} of held-out on-topic tokens and "
        f"{shares.off_topic:.1%} of held-out off-topic tokens"
    )
    if shares.first_answer_tokens is None:
        return text + "."
    by_position = ", ".join(f"{share:.0%}" for share in shares.by_answer_position)
    return (
        f"{text}; on {shares.questions:.0%} of the on-topic questions' tokens, and on {shares.first_answer_tokens:.0%} "
        f"of the first {len(shares.by_answer_position)} answer tokens (by position: {by_position})."
    )


def _share(judged: Judged | None, side: str) -> str:
    return "—" if judged is None else f"{getattr(judged, side):.0%}"


def figure(value: float | None, spec: str = "+.3f") -> str:
    """A table cell for a figure that may be missing."""
    return "—" if value is None else format(value, spec)
