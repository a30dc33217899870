"""Markdown tables of effects: shifts with their intervals, the held-out table, greedy answers side by side."""

from __future__ import annotations

from finsurg.effects import Effect
from finsurg.steer.findings import Example, HeldoutRow, Judged, RoutesHeldout


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


def routes_table(heldout: RoutesHeldout) -> list[str]:
    """Both routes on the held-out splits: shift, the costs, and what greedy answers do."""
    lines = [
        "| route | variant | Δ log-odds [95% CI] | wrong way | off-topic KL | neutral KL | on-topic prose perplexity "
        "| answers with a concrete move | answers that hedge or refer | off-topic answers unchanged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = heldout.base.answers
    lines.append(f"| base | — | — | — | — | — | — | {_share(base, 'positive')} | {_share(base, 'negative')} | — |")
    for route, rows in (("unconditional", heldout.unconditional), ("conditional", heldout.conditional)):
        for name, row in rows.items():
            delta, wrong = cells(row.shift)
            prose = "—" if row.prose_perplexity_change is None else f"{row.prose_perplexity_change:+.1%}"
            lines.append(
                f"| {route} | {name} | {delta} | {wrong} | {row.off_topic_kl:.4f} | {row.neutral_kl:.4f} | "
                f"{prose} | {_share(row.answers, 'positive')} | {_share(row.answers, 'negative')} | "
                f"{row.off_topic_unchanged:.0%} |"
            )
    return lines


def _share(judged: Judged | None, side: str) -> str:
    return "—" if judged is None else f"{getattr(judged, side):.0%}"
