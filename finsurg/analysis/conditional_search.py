"""The conditional route: the tuned direction, gated by the topic condition, searched by measurement.

An Optuna search (seeded TPE) covers the layer band, the per-layer strength, and the gate's shift and
sharpness (gate z = sharpness · (probe logit − shift)). Its objectives on the tune splits: what users read,
to maximise, and the mean per-token KL on off-topic conversations, to minimise. What users read is the
judged greedy answers to the tune questions (the weaker of the steered side's positive share and the
conservative side's negative share), where the pack has phrase rules; else the two-sided log-odds shift of
fixed answers. Budgets bound the costs: the off-topic KL, the perplexity of on-topic prose that explains
rather than advises, and, for judged answers, their repetition and whether they take up the question, within
margins of the base's. The unconditional route's tuned point is measured on the same objectives, and the route
that wins at the budgets is the recipe's: among points within them, those within one standard error of the best
objective, and of those the larger log-odds shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from finsurg import progress
from finsurg.analysis.judged_objective import AnswerObjective, Reading
from finsurg.analysis.measures import Divergence, Measure, Perplexity
from finsurg.analysis.topic_probes import Probe
from finsurg.analysis.tune import offsets_for
from finsurg.steer.findings import RoutePoint
from finsurg.steer.surgery import Surgery

STRENGTH_RANGE = (0.0, 0.5)  # offset norm per layer, as a fraction of the residual norm there
PROBE_STRENGTH = 0.03
# the share of the binding budget a trial aims at: a gate open on the whole answer repeats itself well before
# the prose budget is spent, so the range reaches far below it
SHARE_RANGE = (0.03, 1.0)
START_SHARE = 0.15
SHIFT_RANGE = (-2.0, 12.0)  # probe-logit units
SHARPNESS_RANGE = (1.0, 32.0)
STARTS = ((4.0, 8.0), (6.0, 16.0), (8.0, 16.0))  # (shift, sharpness) tried first
BAND_REACH = 2  # the conditional band starts within this many layers of the unconditional one


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
    reading: Reading | None = None
    keeps_answers: bool = True
    items: dict[float, list[float]] = field(default_factory=dict, repr=False)

    @property
    def two_sided(self) -> float:
        return min(self.shift_up, -self.shift_down)

    @property
    def objective(self) -> float:
        """The judged two-sided share where answers are judged, else the two-sided log-odds shift."""
        return self.two_sided if self.reading is None else self.reading.score

    @property
    def noise(self) -> float:
        """How far apart two objectives must be to rank the points: a judged share's standard error; a log-odds
        shift averages every token of every answer, so it ranks as it stands."""
        return 0.0 if self.reading is None else self.reading.standard_error

    def within(self, kl_budget: float, prose_budget: float) -> bool:
        prose_ok = self.prose is None or self.prose <= prose_budget
        return self.off_topic_kl <= kl_budget and prose_ok and self.keeps_answers

    def row(self) -> RoutePoint:
        return RoutePoint(
            route=self.route,
            trial=self.number,
            layers=[self.layers[0], self.layers[-1]],
            strength=round(self.strength, 5),
            gate_shift=self.shift,
            gate_sharpness=self.sharpness,
            off_topic_kl=self.off_topic_kl,
            prose_perplexity_change=self.prose,
            shift_up=self.shift_up,
            shift_down=self.shift_down,
            two_sided=self.two_sided,
            steered_positive=None if self.reading is None else self.reading.steered_positive,
            conservative_negative=None if self.reading is None else self.reading.conservative_negative,
            repeated_4grams=None if self.reading is None else self.reading.repeated_4grams,
            addressed=None if self.reading is None else self.reading.addressed,
        )


@dataclass
class Costs:
    """The tune splits a route is judged on."""

    answers: Measure
    off_topic: Divergence
    prose: Perplexity | None
    judged: AnswerObjective | None = None

    def binding(self, up: Surgery) -> float:
        """The cost that bounds a gated strength: on-topic prose perplexity, else off-topic KL (both directions)."""
        both = (up, up.negated())
        if self.prose is not None:
            return max(self.prose.change(surgery) for surgery in both)
        return max(self.off_topic(surgery) for surgery in both)

    def point(self, route, number, layers, strength, up: Surgery, **gate) -> Point:
        """A trial judged on every tune objective, at +strength (`up`) and its mirror."""
        down = up.negated()
        items = {1.0: self.answers.shifts(up), -1.0: self.answers.shifts(down)}
        prose = None
        if self.prose is not None:
            prose = max(self.prose.change(up), self.prose.change(down))
        reading = None if self.judged is None else self.judged(up)
        return Point(
            route,
            number,
            layers,
            strength,
            off_topic_kl=max(self.off_topic(up), self.off_topic(down)),
            prose=prose,
            shift_up=_mean(items[1.0]),
            shift_down=_mean(items[-1.0]),
            reading=reading,
            keeps_answers=reading is None or self.judged.keeps_answers(reading),
            items=items,
            **gate,
        )


@dataclass(frozen=True)
class Gated:
    """What a gated trial is built from: the tuned direction, its per-layer scale, and each layer's topic probe."""

    direction: dict
    scale: torch.Tensor
    probes: dict[int, Probe]

    def surgery(self, layers: list[int], strength: float, shift: float, sharpness: float) -> Surgery:
        """The band's offsets at +strength, each under a gate with the settings every layer of the band shares."""
        up = offsets_for(self.direction, self.scale, layers, strength)
        return Surgery.of(up, {layer: self.probes[layer].as_gate(shift, sharpness) for layer in layers})


def reach(first: list[int], band_range: tuple[int, int]) -> tuple[int, int]:
    """The layers a conditional band may cover: near the unconditional route's band."""
    return max(band_range[0], first[0] - BAND_REACH), min(band_range[1], first[-1] + BAND_REACH)


def search_gated(
    costs: Costs, gated: Gated, band_range: tuple[int, int], first: list[int], budgets, trials: int, seed: int
) -> list[Point]:
    """The conditional route's trials. `budgets` is (off-topic KL, prose perplexity change), `gated.probes` maps a
    layer in `band_range` to its probe, and `first` is the band the search starts from (the unconditional route's,
    whose direction it gates).

    A trial's strength is found as the share of the binding budget it aims to spend (the prose budget, or the
    off-topic one for a pack without prose): that cost grows about as the square of the strength, so one reading
    at a probe strength tells which strength spends the share, with one correction where it grew faster.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lowest, highest = band_range
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(6, max(1, trials // 2)))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for shift, sharpness in STARTS:  # the unconditional band, with gates from loose to tight
        study.enqueue_trial(
            {
                "start": first[0],
                "width": len(first),
                "gate_shift": shift,
                "gate_sharpness": sharpness,
                "budget_share": START_SHARE,
            }
        )
    budget = budgets[1] if costs.prose is not None else budgets[0]
    points = []
    with progress.bar(total=trials, desc="tuning the conditional route (Optuna TPE)") as bar:
        for _ in range(trials):
            trial = study.ask()
            start = trial.suggest_int("start", lowest, highest)
            width = trial.suggest_int("width", 1, 2 * len(first))
            shift = trial.suggest_float("gate_shift", *SHIFT_RANGE)
            sharpness = trial.suggest_float("gate_sharpness", *SHARPNESS_RANGE, log=True)
            share = trial.suggest_float("budget_share", *SHARE_RANGE, log=True)
            band = list(range(start, min(start + width, highest + 1)))
            strength = PROBE_STRENGTH
            for _attempt in range(2):  # the probe reading, then one correction
                cost = costs.binding(gated.surgery(band, strength, shift, sharpness))
                strength = min(strength * math.sqrt(share * budget / max(cost, 1e-12)), STRENGTH_RANGE[1])
            up = gated.surgery(band, strength, shift, sharpness)
            point = costs.point("conditional", trial.number, band, strength, up, shift=shift, sharpness=sharpness)
            trial.set_user_attr("strength", strength)
            points.append(point)
            feasible = point.within(*budgets)
            study.tell(trial, [point.objective if feasible else min(point.objective, 0.0), point.off_topic_kl])
            bar.update()
    return points


def winner(points: list[Point], budgets) -> Point | None:
    """Among the points within the budgets, those whose objective is within one standard error of the best (the
    one-standard-error rule: judged shares on a few dozen questions cannot rank points closer than that), and of
    those the larger two-sided log-odds shift, which every token of every tune answer measures."""
    feasible = [p for p in points if p.within(*budgets)]
    if not feasible:
        return None
    best = max(feasible, key=lambda p: (p.objective, p.two_sided, -p.off_topic_kl))
    close = [p for p in feasible if p.objective >= best.objective - best.noise]
    return max(close, key=lambda p: (p.two_sided, -p.off_topic_kl))


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both the objective and the off-topic KL."""
    front = [
        p
        for p in points
        if not any(
            o.objective >= p.objective
            and o.off_topic_kl <= p.off_topic_kl
            and (o.objective > p.objective or o.off_topic_kl < p.off_topic_kl)
            for o in points
        )
    ]
    return sorted(front, key=lambda p: p.off_topic_kl)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
