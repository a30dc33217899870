"""Architecture descriptors, declared as data (finsurg/data/architectures/*.json).

A descriptor names a family's tensors, the config flag that turns its biases on, and the site
where a baked offset lands: the bias that carries it, the module whose output it shifts, and the
matching TransformerLens and lm-eval hook points. Code asks the descriptor; it never tests an
architecture's name.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict

from finsurg.errors import FinsurgError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bias(_Frozen):
    name: str  # template with {layer}
    size: str  # the config key that gives its length


class Site(_Frozen):
    name: str
    description: str
    bias: str  # the bias tensor that carries the offset
    module: str  # the module whose output the offset shifts (plain PyTorch hooks)
    transformer_lens: str
    lm_eval: str


class Architecture(_Frozen):
    family: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    layers: str  # the decoder layers' ModuleList
    bias_flag: str
    biases: tuple[Bias, ...]
    weights: tuple[str, ...]  # tensors every layer must have
    site: Site

    def bias_names(self, layer: int) -> list[str]:
        return [bias.name.format(layer=layer) for bias in self.biases]

    def bias_size(self, name_template: str, config: dict) -> int:
        return int(config[next(b.size for b in self.biases if b.name == name_template)])

    def offset_bias(self, layer: int) -> str:
        return self.site.bias.format(layer=layer)

    def module(self, layer: int) -> str:
        return self.site.module.format(layer=layer)

    def tl_hook(self, layer: int) -> str:
        return self.site.transformer_lens.format(layer=layer)

    def lm_eval_hook(self, layer: int) -> str:
        return self.site.lm_eval.format(layer=layer)

    def weight_names(self, layer: int) -> list[str]:
        return [name.format(layer=layer) for name in self.weights]


@cache
def descriptors() -> tuple[Architecture, ...]:
    folder = resources.files("finsurg") / "data" / "architectures"
    return tuple(
        Architecture.model_validate(json.loads(entry.read_text()))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".json")
    )


def supported() -> list[str]:
    return [name for arch in descriptors() for name in arch.architectures]


def for_config(config: dict, where: str = "model") -> Architecture:
    """The descriptor of a config.json; unsupported families are refused with one line."""
    archs = config.get("architectures") or []
    for arch in descriptors():
        if set(archs) & set(arch.architectures) or config.get("model_type") in arch.model_types:
            return arch
    found = ", ".join(archs) or config.get("model_type") or "unknown"
    raise FinsurgError(f"{where}: unsupported architecture {found}; finsurg handles {', '.join(supported())}")


def by_name(architecture: str) -> Architecture:
    return for_config({"architectures": [architecture]}, architecture)
