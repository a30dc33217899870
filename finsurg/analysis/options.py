"""What an analysis run is asked to do: the options `finsurg analyze` takes, and the tuning group cut from them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt, ValidationInfo, field_validator

from finsurg.options import Group, flag

SWEEP_ALPHAS = (-5.0, -3.0, -1.0, 0.0, 1.0, 3.0, 5.0)


class TuneOptions(Group):
    """How answer-behaviour steering is searched for (phases 6-8)."""

    trials: PositiveInt = Field(12, **flag("tuning trials"))
    kl_budget: float = Field(0.1, **flag("capability budget: mean per-token KL from the base on neutral replies"))
    seed: int = Field(0, **flag("the tuner's random seed"))
    method: Literal["auto", "seed", "caa", "pca"] = Field(
        "auto", **flag("direction method (auto: the tuner chooses among seed, caa and pca)")
    )
    positions: Literal["answer_mean", "answer_last"] = Field(
        "answer_mean", **flag("where answer activations are read: the mean over answer tokens, or the last one")
    )
    batch_size: PositiveInt = Field(16, **flag("prompts per forward pass"))
    route: Literal["auto", "conditional", "unconditional"] = Field(
        "auto",
        **flag(
            "conditional: the offset gated by a topic condition learnt from the pack; unconditional: added everywhere; "
            "auto: the route with the larger shift within both budgets"
        ),
    )
    gate_trials: PositiveInt = Field(8, **flag("tuning trials of the conditional route"))
    tune_pairs: PositiveInt = Field(
        40,
        **flag(
            "the most tune pairs each trial reads and generates answers for (the first in split order), so a trial's "
            "cost stays fixed as a pack grows"
        ),
    )
    off_topic_budget: float = Field(
        0.0001, **flag("budget of both routes: mean per-token KL from the base on the pack's off-topic conversations")
    )
    prose_budget: float = Field(
        0.35, **flag("budget of both routes: relative perplexity increase on the pack's on-topic prose")
    )
    samples: int = Field(
        4, ge=0, **flag("sampled answers per held-out question (temperature 0.7, seeded) that are judged; 0: none")
    )
    dial: list[float] = Field(
        [],
        **flag(
            "alphas at which both routes' held-out answers are judged, each both ways, comma-separated "
            "(e.g. 1,2,3,4,5); empty: no dial",
            comma=True,
        ),
    )

    @field_validator("kl_budget", "off_topic_budget", "prose_budget")
    @classmethod
    def _positive(cls, value: float, info: ValidationInfo) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"--{info.field_name.replace('_', '-')} must be a positive finite number, got {value}")
        return value


class AnalysisOptions(TuneOptions):
    out: Path = Field(Path("finsurg-analysis"), **flag("run directory"))
    behaviour: str | None = Field(
        None,
        **flag("a behaviour pack: a directory, a file of pairs (.jsonl, .json) or a built-in name (default: finance)"),
    )
    pool: Literal["last", "mean"] = Field("last", **flag("token positions pooled"))
    layers: str | None = Field(None, **flag("steered layers, e.g. 20-25 (default: where separation peaks)"))
    top_k: PositiveInt = Field(10, **flag("dimensions ranked per layer"))
    sweep: bool = Field(True, **flag("run the question-category alpha sweep (without tuning only)", flag="--no-sweep"))
    sweep_alphas: list[float] = Field(
        list(SWEEP_ALPHAS), **flag("the alphas the sweep visits, comma-separated", comma=True)
    )
    overwrite: bool = Field(False, **flag("replace an existing run directory"))
    tune: bool = Field(
        True,
        **flag(
            "tune answer-behaviour directions and strength (without it: the seed method, as the seed card did)",
            flag="--no-tune",
        ),
    )

    def sweep_at(self) -> list[float]:
        """The sweep's alphas: the seed method's check, run where tuning does not judge the recipe."""
        return self.sweep_alphas if self.sweep and not self.tune else []

    def tuning(self) -> TuneOptions | None:
        """The tuning group, or None when tuning is off."""
        return TuneOptions(**self.model_dump(include=set(TuneOptions.model_fields))) if self.tune else None
