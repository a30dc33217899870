"""Tuning: an Optuna search (seeded TPE) over the direction method, the layer band and the strength.

Two objectives on the tune split: the two-sided behaviour shift, min(shift at +s, −shift at −s),
to maximise; and the capability cost, the larger mean per-token KL from the base on neutral
replies of the two directions, to minimise. The chosen point is the largest two-sided shift whose cost is within the KL
budget; no feasible trial beats it.

The strength is searched as the share of the budget a trial aims to spend: KL grows about as the
square of the strength, so one KL reading at a probe strength tells which strength spends that
share (with one correction where it grew faster), and trials land across the budget instead of
far beyond it. A trial whose measured cost
still exceeds the budget several times over is not measured further: its shift is unmeasured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from finsurg import progress
from finsurg.analysis.measures import Measure
from finsurg.errors import FinsurgError
from finsurg.steer.findings import TrialRow
from finsurg.steer.surgery import Surgery

SHARE_RANGE = (0.05, 1.0)  # the share of the KL budget a trial aims at
PROBE = 0.05  # probe strength: total offset norm across the band, as a fraction of the residual norm
TUNED_ALPHA = 3.0  # the tuned strength is written as the recipe's default alpha
SKIP_FACTOR = 3.0  # trials costing more than this times the budget are not measured further


@dataclass
class Trial:
    number: int
    method: str
    layers: list[int]
    strength: float
    kl: float
    shift_up: float | None = None
    shift_down: float | None = None
    items: dict[float, list[float]] = field(default_factory=dict, repr=False)  # per-item shifts at ±strength

    @property
    def measured(self) -> bool:
        return self.shift_up is not None

    @property
    def two_sided(self) -> float:
        return min(self.shift_up, -self.shift_down) if self.measured else -math.inf

    def row(self) -> TrialRow:
        return TrialRow(
            trial=self.number,
            method=self.method,
            layers=[self.layers[0], self.layers[-1]],
            strength=round(self.strength, 5),
            kl=self.kl,
            shift_up=self.shift_up,
            shift_down=self.shift_down,
            two_sided=None if not self.measured else self.two_sided,
        )


@dataclass
class Search:
    trials: list[Trial] = field(default_factory=list)
    budget: float = 0.1

    def feasible(self) -> list[Trial]:
        return [t for t in self.trials if t.measured and t.kl <= self.budget]

    def chosen(self) -> Trial:
        feasible = self.feasible()
        if not feasible:
            raise FinsurgError(f"no trial stayed within the KL budget {self.budget:g}; raise --kl-budget or --trials")
        return max(feasible, key=lambda t: (t.two_sided, -t.kl))

    def pareto(self) -> list[Trial]:
        """Measured trials that no other measured trial beats on both shift and cost."""
        measured = [t for t in self.trials if t.measured]
        front = [
            t
            for t in measured
            if not any(
                o.two_sided >= t.two_sided and o.kl <= t.kl and (o.two_sided > t.two_sided or o.kl < t.kl)
                for o in measured
            )
        ]
        return sorted(front, key=lambda t: t.kl)


def band_range(layers: int) -> tuple[int, int]:
    """The first and last layer a band may cover: past the first sixth, short of the last (which feeds the final
    norm directly)."""
    return max(1, layers // 6), layers - 2


def offsets_for(directions: torch.Tensor, scale: torch.Tensor, layers: list[int], strength: float) -> dict:
    """Per steered layer, strength × residual norm × unit direction."""
    return {layer: (strength * scale[layer] * directions[layer].double()).float() for layer in layers}


def search(
    measure: Measure,
    directions: dict[str, torch.Tensor],
    scale: torch.Tensor,
    layers: int,
    trials: int,
    budget: float,
    seed: int,
) -> Search:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lowest, highest = band_range(layers)
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, max(1, trials // 2)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    found = Search(budget=budget)
    with progress.bar(total=trials, desc="tuning (Optuna TPE)") as bar:
        for _ in range(trials):
            trial = study.ask()
            method = trial.suggest_categorical("method", sorted(directions))
            start = trial.suggest_int("start", lowest, highest)
            width = trial.suggest_int("width", 1, max(2, layers // 3))
            share = trial.suggest_float("budget_share", *SHARE_RANGE, log=True)
            band = list(range(start, min(start + width, highest + 1)))
            probe = PROBE / len(band)
            probed = measure.kl(Surgery.of(offsets_for(directions[method], scale, band, probe)))
            strength = probe * math.sqrt(share * budget / max(probed, 1e-12))
            up, down, kl = _both_ways(measure, directions[method], scale, band, strength)
            if budget < kl <= SKIP_FACTOR * budget:  # KL grew faster than the square: one correction
                strength *= math.sqrt(share * budget / kl)
                up, down, kl = _both_ways(measure, directions[method], scale, band, strength)
            result = Trial(trial.number, method, band, strength, kl=kl)
            trial.set_user_attr("strength", strength)
            if result.kl <= SKIP_FACTOR * budget:
                result.items = {1.0: measure.shifts(up), -1.0: measure.shifts(down)}
                result.shift_up, result.shift_down = _mean(result.items[1.0]), _mean(result.items[-1.0])
            found.trials.append(result)
            study.tell(trial, [result.two_sided if result.measured else 0.0, result.kl])
            bar.update()
    return found


def _both_ways(measure: Measure, direction: torch.Tensor, scale: torch.Tensor, band: list[int], strength: float):
    """Offsets at +strength and −strength, and the larger of their costs."""
    up = Surgery.of(offsets_for(direction, scale, band, strength))
    down = up.negated()
    return up, down, max(measure.kl(up), measure.kl(down))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
