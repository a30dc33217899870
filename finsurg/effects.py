"""Effects judged item by item: the mean shift with a bootstrap interval, and who moved the wrong way."""

from __future__ import annotations

import random
from collections.abc import Sequence

BOOTSTRAP = 2000
SEED = 0


def effect(shifts: Sequence[float], direction: float, resamples: int = BOOTSTRAP, seed: int = SEED) -> dict:
    """Mean shift, its 95% percentile-bootstrap interval, and the fraction moved against `direction` (±1)."""
    n = len(shifts)
    mean = sum(shifts) / n
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(shifts, k=n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    wrong = sum(1 for s in shifts if s * direction < 0) / n
    return {"mean": mean, "ci95": [low, high], "wrong_way": wrong, "items": n}


def preference(margins: Sequence[float]) -> float:
    """The fraction of items whose positive answer is the more likely one."""
    return sum(1 for m in margins if m > 0) / len(margins)


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
