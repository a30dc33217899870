"""Effects judged item by item: the mean shift with a bootstrap interval, and who moved the wrong way."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

BOOTSTRAP = 2000
SEED = 0


class Effect(BaseModel):
    """A shift judged item by item: mean, 95% bootstrap interval, fraction moved the wrong way."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    ci95: list[float]
    wrong_way: float
    items: int


def effect(shifts: Sequence[float], direction: float, resamples: int = BOOTSTRAP, seed: int = SEED) -> Effect:
    """Mean shift, its 95% percentile-bootstrap interval, and the fraction moved against `direction` (±1)."""
    n = len(shifts)
    mean = sum(shifts) / n
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(shifts, k=n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    wrong = sum(1 for s in shifts if s * direction < 0) / n
    return Effect(mean=mean, ci95=[low, high], wrong_way=wrong, items=n)


def preference(margins: Sequence[float]) -> float:
    """The fraction of items whose positive answer is the more likely one."""
    return sum(1 for m in margins if m > 0) / len(margins)
