"""The conditional route: the tuned direction, gated by the topic condition, searched by measurement.

An Optuna search (seeded TPE) covers the layer band, the per-layer strength, and the gate's shift and
sharpness (gate z = sharpness · (probe logit − shift)). Its objectives on the tune splits: the two-sided
on-topic shift, to maximise, and the mean per-token KL on off-topic conversations, to minimise. A second
budget bounds the on-topic cost: the perplexity of on-topic prose that explains rather than advises. The
unconditional route's tuned point is measured on the same objectives, and the route that wins at the budgets
(the largest two-sided shift among points within both) is the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from finsurg import progress
from finsurg.analysis.answers import Divergence, Measure, Perplexity
from finsurg.analysis.condition import Probe
from finsurg.steer.graft import Gate, split

STRENGTH_RANGE = (0.02, 0.5)  # offset norm per layer, as a fraction of the residual norm there
SHIFT_RANGE = (-3.0, 6.0)  # probe-logit units
SHARPNESS_RANGE = (0.25, 4.0)


@dataclass
class Point:
    """One measured surgery on the tune splits: its two-sided shift and both costs."""

    route: str
    number: int
    layers: list[int]
    strength: float
    off_topic_kl: float
    prose: float | None  # relative perplexity change of on-topic prose, the larger of the two directions
    shift_up: float
    shift_down: float
    shift: float | None = None  # the gate's, in probe-logit units
    sharpness: float | None = None
    items: dict[float, list[float]] = field(default_factory=dict, repr=False)

    @property
    def two_sided(self) -> float:
        return min(self.shift_up, -self.shift_down)

    def within(self, kl_budget: float, prose_budget: float) -> bool:
        return self.off_topic_kl <= kl_budget and (self.prose is None or self.prose <= prose_budget)

    def row(self) -> dict:
        return {
            "route": self.route,
            "trial": self.number,
            "layers": [self.layers[0], self.layers[-1]],
            "strength": round(self.strength, 5),
            "gate_shift": self.shift,
            "gate_sharpness": self.sharpness,
            "off_topic_kl": self.off_topic_kl,
            "prose_perplexity_change": self.prose,
            "shift_up": self.shift_up,
            "shift_down": self.shift_down,
            "two_sided": self.two_sided,
        }


@dataclass
class Costs:
    """The tune splits a route is judged on."""

    answers: Measure
    off_topic: Divergence
    prose: Perplexity | None

    def point(self, route, number, layers, strength, up, down, up_grafts=None, down_grafts=None, **gate) -> Point:
        items = {1.0: self.answers.shifts(up, grafts=up_grafts), -1.0: self.answers.shifts(down, grafts=down_grafts)}
        prose = None
        if self.prose is not None:
            prose = max(self.prose.change(up, up_grafts), self.prose.change(down, down_grafts))
        return Point(
            route,
            number,
            layers,
            strength,
            off_topic_kl=max(self.off_topic(up, grafts=up_grafts), self.off_topic(down, grafts=down_grafts)),
            prose=prose,
            shift_up=_mean(items[1.0]),
            shift_down=_mean(items[-1.0]),
            items=items,
            **gate,
        )


def gated_offsets(direction, scale, probes: dict[int, Probe], layers, strength, shift, sharpness):
    """Offsets at ±strength per layer, and the gates every layer of the band shares the settings of."""
    up = {layer: (strength * scale[layer] * direction[layer].double()).float() for layer in layers}
    gates = {layer: probes[layer].as_gate(shift, sharpness) for layer in layers}
    return up, gates


def grafts_of(offsets: dict[int, torch.Tensor], gates: dict[int, Gate]):
    """The hooks' grafted neurons in float32 (an analysis runs in float32; the bake rounds to the variant's dtype)."""
    return split(offsets, gates, torch.float32)[1]


def search_gated(
    costs: Costs, direction, scale, probes, band_range: tuple[int, int], trials: int, budgets, seed: int
) -> list[Point]:
    """The conditional route's trials; `budgets` is (off-topic KL, prose perplexity change), `probes` maps a layer
    in `band_range` to its probe."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lowest, highest = band_range
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, max(1, trials // 2)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    points = []
    with progress.bar(total=trials, desc="tuning the conditional route (Optuna TPE)") as bar:
        for _ in range(trials):
            trial = study.ask()
            start = trial.suggest_int("start", lowest, highest)
            width = trial.suggest_int("width", 1, max(2, (highest + 2) // 3))
            strength = trial.suggest_float("strength", *STRENGTH_RANGE, log=True)
            shift = trial.suggest_float("gate_shift", *SHIFT_RANGE)
            sharpness = trial.suggest_float("gate_sharpness", *SHARPNESS_RANGE, log=True)
            band = list(range(start, min(start + width, highest + 1)))
            up, gates = gated_offsets(direction, scale, probes, band, strength, shift, sharpness)
            down = {layer: -vector for layer, vector in up.items()}
            point = costs.point(
                "conditional",
                trial.number,
                band,
                strength,
                {},
                {},
                grafts_of(up, gates),
                grafts_of(down, gates),
                shift=shift,
                sharpness=sharpness,
            )
            points.append(point)
            feasible = point.within(*budgets)
            study.tell(trial, [point.two_sided if feasible else min(point.two_sided, 0.0), point.off_topic_kl])
            bar.update()
    return points


def winner(points: list[Point], budgets) -> Point | None:
    """The largest two-sided shift among points within both budgets."""
    feasible = [p for p in points if p.within(*budgets)]
    return max(feasible, key=lambda p: (p.two_sided, -p.off_topic_kl)) if feasible else None


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both the two-sided shift and the off-topic KL."""
    front = [
        p
        for p in points
        if not any(
            o.two_sided >= p.two_sided
            and o.off_topic_kl <= p.off_topic_kl
            and (o.two_sided > p.two_sided or o.off_topic_kl < p.off_topic_kl)
            for o in points
        )
    ]
    return sorted(front, key=lambda p: p.off_topic_kl)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
