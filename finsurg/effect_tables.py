"""Markdown tables of effects: shifts with their intervals, the held-out table, greedy answers side by side."""

from __future__ import annotations


def cells(result: dict | None) -> tuple[str, str]:
    """Table cells for an effect: 'Δ [95% CI]' and the wrong-way share ('—' when there is none)."""
    if not result:
        return "—", "—"
    low, high = result["ci95"]
    return f"{result['mean']:+.2f} [{low:+.2f}, {high:+.2f}]", f"{result['wrong_way']:.0%}"


def shift_table(shifts: dict[str, dict]) -> list[str]:
    """Markdown rows: each run's shift from the base with its interval and wrong-way share."""
    lines = ["| run | Δ log-odds [95% CI] | wrong way | items |", "|---|---|---|---|"]
    for name, result in shifts.items():
        delta, wrong = cells(result)
        lines.append(f"| {name} | {delta} | {wrong} | {result['items']} |")
    return lines


def heldout_table(heldout: dict) -> list[str]:
    """The held-out table: base, each steering and each system prompt, shift with its interval."""
    lines = [
        "| | preference | mean log-odds | Δ log-odds [95% CI] | wrong way | KL on neutral replies |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in heldout.items():
        delta, wrong = cells(row.get("shift"))
        label = f"{name} (alpha {row['alpha']:+g})" if "alpha" in row else name.replace("_", " ")
        kl = f"{row['kl']:.4f}" if "kl" in row else "—"
        lines.append(f"| {label} | {row['preference']:.0%} | {row['log_odds']:+.2f} | {delta} | {wrong} | {kl} |")
    return lines


def examples_table(examples: list[dict]) -> list[str]:
    """Greedy answers side by side: question, base, steered, conservative."""
    lines = ["| question | base | steered | conservative |", "|---|---|---|---|"]
    for row in examples:
        texts = [
            row[key].replace("|", "/").replace("\n", " ") for key in ("question", "base", "steered", "conservative")
        ]
        lines.append("| " + " | ".join(texts) + " |")
    return lines


def routes_table(heldout: dict) -> list[str]:
    """Both routes on the held-out splits: shift, the costs, and what greedy answers do."""
    lines = [
        "| route | variant | Δ log-odds [95% CI] | wrong way | off-topic KL | neutral KL | on-topic prose perplexity "
        "| answers with a concrete move | answers that hedge or refer | off-topic answers unchanged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = heldout["base"]["answers"]
    lines.append(f"| base | — | — | — | — | — | — | {_share(base, 'positive')} | {_share(base, 'negative')} | — |")
    for route in ("unconditional", "conditional"):
        for name, row in heldout.get(route, {}).items():
            delta, wrong = cells(row["shift"])
            prose = "—" if row["prose_perplexity_change"] is None else f"{row['prose_perplexity_change']:+.1%}"
            lines.append(
                f"| {route} | {name} | {delta} | {wrong} | {row['off_topic_kl']:.4f} | {row['neutral_kl']:.4f} | "
                f"{prose} | {_share(row['answers'], 'positive')} | {_share(row['answers'], 'negative')} | "
                f"{row['off_topic_unchanged']:.0%} |"
            )
    return lines


def _share(judged: dict | None, side: str) -> str:
    return "—" if judged is None else f"{judged[side]:.0%}"
