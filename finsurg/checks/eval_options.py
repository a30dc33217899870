"""The options of the checks a user runs on variants: lm-eval's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from finsurg.options import Group, flag


class EvalOptions(Group):
    tasks: list[str] = Field(
        [], **flag("extra lm-eval task names, comma-separated (the pack's tasks always run)", comma=True)
    )
    limit: PositiveInt | None = Field(None, **flag("evaluate only the first N items of each task"))
    eval_batch_size: PositiveInt = Field(16, **flag("lm-eval batch size"))
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", **flag("render task prompts with the model's chat template (auto: when it has one)")
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        **flag(
            "vllm: lm-eval's vllm model type runs the base, the prompting baselines and the baked variants (the "
            "route for 8B and larger); hook parity stays on transformers where the model fits memory"
        ),
    )
    vllm_python: str | None = Field(None, **flag("the Python that has vLLM and lm-eval (default: this one)"))

    @property
    def chat(self) -> bool | None:
        return {"auto": None, "on": True, "off": False}[self.chat_template]
