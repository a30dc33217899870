"""The lm-eval report: each run's metrics, item-by-item parity of baked and hooked, and the preference shifts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from finsurg.effects import Effect
from finsurg.variant.record import Record


class Parity(Record):
    max_abs_loglik_diff: dict[str, float]
    worst: float
    atol: float
    passed: bool


class VariantEval(Record):
    alpha: float
    path: str
    parity: Parity | None  # None where the model is too large for the transformers route
    change: dict[str, float]


RunKind = Literal["base", "prompt", "baked", "hooked", "baked:transformers"]


@dataclass(frozen=True)
class RunKey:
    """The name of one lm-eval run in eval.json: the base, the base under one side's system prompt (the
    prompting baseline), or a variant's baked or hooked run (baked:transformers beside a vLLM run)."""

    kind: RunKind = "base"
    variant: str | None = None
    side: str | None = None  # of a prompt run: "positive" or "negative"

    @classmethod
    def of(cls, variant: str, kind: RunKind) -> RunKey:
        return cls(kind, variant=variant)

    @classmethod
    def prompt(cls, side: str) -> RunKey:
        return cls("prompt", side=side)

    @classmethod
    def parse(cls, name: str) -> RunKey:
        if name == "base":
            return cls()
        if name.startswith("prompt:"):
            return cls.prompt(name.removeprefix("prompt:"))
        variant, _, kind = name.partition("/")
        return cls.of(variant, kind)

    def __str__(self) -> str:
        if self.kind == "base":
            return "base"
        return f"prompt:{self.side}" if self.kind == "prompt" else f"{self.variant}/{self.kind}"


BASE_RUN = RunKey()


class EvalRun(Record):
    format: Literal["finsurg.eval/1"] = "finsurg.eval/1"
    finsurg_version: str
    base_model: str
    tasks: list[str]
    headlines: dict[str, str]  # task -> the metric that sums it up
    task_titles: dict[str, str]
    chat_template: bool
    limit: int | None
    compute_dtype: str
    weights_dtype: str
    prompting: dict[str, str] = {}  # prompt run key -> the system prompt the base ran with
    engines: dict[str, str] = {}  # run name -> the engine that produced its figures (transformers or vllm)
    parity_route: str = "baked and hooked both on transformers"
    # run key (str(RunKey): "base", "prompt:positive", "steered/baked", ...) -> task -> metric
    metrics: dict[str, dict[str, dict[str, float]]]
    # per run, the preference task's log-odds shift from the base, judged item by item
    shifts: dict[str, Effect] = {}
    seconds: dict[str, float]
    disclaimer: str


class EvalReport(EvalRun):
    """Every variant of one evaluation: eval.json beside the variants."""

    variants: dict[str, VariantEval]
    passed: bool


class VariantEvalReport(EvalRun, VariantEval):
    """One variant's share of an evaluation: eval.json inside the variant."""

    variant: str
