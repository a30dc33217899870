"""Architecture descriptors, declared as data (finsurg/data/architectures/*.json).

A descriptor names a family's route to an exact bake: the config keys the bake sets in the
variant (the flags that turn biases on, or a rewrite to another architecture), every bias tensor
the variant then has, and the site where a baked offset lands: the bias that carries it (divided
by a config multiplier where the sublayer's output is scaled), the module whose output it shifts,
and the matching TransformerLens and lm-eval hook points. A family without an exact route is a
descriptor with the reason it is refused. Code asks the descriptor; it never tests an
architecture's name.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict

from finsurg.errors import FinsurgError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bias(_Frozen):
    name: str  # template with {layer}
    size: str  # config keys whose product is its length, e.g. "num_key_value_heads*head_dim"


def config_size(expression: str, config: dict) -> int:
    """The product of config keys; head_dim defaults to hidden_size / num_attention_heads."""
    size = 1
    for key in expression.split("*"):
        value = config.get(key)
        if value is None and key == "head_dim":
            value = int(config["hidden_size"]) // int(config["num_attention_heads"])
        size *= int(value)
    return size


class SlidingWindow(_Frozen):
    """A window that limits attention: the bake is exact only where it covers the whole context."""

    size: str  # config key of the window
    enabled: str | None = None  # config key of a switch that turns it on (absent: on when size is set)


class Site(_Frozen):
    name: str
    description: str
    bias: str  # the bias tensor that carries the offset
    module: str  # the module whose output the offset shifts (plain PyTorch hooks)
    transformer_lens: str
    lm_eval: str
    divide_by: str | None = None  # config key: the sublayer output (bias included) is multiplied by it


class Graft(_Frozen):
    """Where conditional surgery grafts its neurons: a SwiGLU MLP whose gate, up and down projections have biases."""

    mlp: str  # the MLP module: its input is the normed stream the gate reads
    gate: str
    up: str
    down: str
    width: str  # config key of the MLP's neuron count, which the graft grows
    transformer_lens_input: str
    transformer_lens_output: str

    def names(self, layer: int) -> dict[str, str]:
        """Projection role -> module path of one layer."""
        return {role: getattr(self, role).format(layer=layer) for role in ("gate", "up", "down")}


class Monitor(_Frozen):
    """How the family's stock sequence classifier holds the base cut after layer L, its final hidden state being
    layer L's normed MLP input: layer L's MLP writes nothing (`zeroed`), and its norm becomes the final norm."""

    classifier: str  # the transformers class
    mlp: str  # the module whose input the probes read
    mlp_norm: str  # the norm weight in front of it
    zeroed: tuple[str, ...]  # layer L's tensors that are set to zero

    def names(self, layer: int) -> tuple[str, str, list[str]]:
        return (
            self.mlp.format(layer=layer),
            self.mlp_norm.format(layer=layer),
            [z.format(layer=layer) for z in self.zeroed],
        )


class Architecture(_Frozen):
    family: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    refused: str | None = None  # why no bias can carry the offset exactly
    layers: str = "model.layers"  # the decoder layers' ModuleList
    variant_config: dict[str, Any] = {}  # keys the bake sets in the variant's config.json
    variant_drops: tuple[str, ...] = ()  # keys a rewrite removes
    rewrite: str | None = None  # why the variant is another architecture, when it is
    sliding_window: SlidingWindow | None = None
    vllm_drops: str | None = None  # why vLLM would not serve the baked offset (checked with verify --engine vllm)
    biases: tuple[Bias, ...] = ()  # every bias tensor of the variant's layers
    weights: tuple[str, ...] = ()  # tensors every layer must have
    site: Site | None = None
    graft: Graft | None = None  # the route of conditional surgery
    graft_refused: str | None = None  # why a family with a site has none
    monitor: Monitor | None = None  # the compliance monitor's truncated classifier
    monitor_refused: str | None = None
    # the pieces a layer-streamed pass reads besides the blocks
    embeddings: str = "model.embed_tokens.weight"
    rotary: str = "model.rotary_emb"
    final_norm: str = "model.norm"
    head: str = "lm_head.weight"  # absent when tied to the embeddings
    embedding_multiplier: str | None = None  # config key: embeddings are scaled by it
    logits_scaling: str | None = None  # config key: logits are divided by it

    def bias_names(self, layer: int) -> list[str]:
        return [bias.name.format(layer=layer) for bias in self.biases]

    def bias_size(self, name_template: str, config: dict) -> int:
        return config_size(next(b.size for b in self.biases if b.name == name_template), config)

    @property
    def variant_architecture(self) -> str:
        return (self.variant_config.get("architectures") or self.architectures)[0]

    def config_of_variant(self, base: dict, dtype: str, context_cap: int | None = None, grown: int = 0) -> dict:
        """The variant's config.json: the base's, with the bake's keys set (and a rewrite's dropped), and its MLPs
        `grown` neurons wider where a graft adds them."""
        config = {key: value for key, value in base.items() if key not in self.variant_drops}
        config.update(self.variant_config)
        if grown:
            config[self.graft.width] = int(base[self.graft.width]) + grown
        config["dtype"] = dtype
        if "torch_dtype" in base:
            config["torch_dtype"] = dtype
        if context_cap:
            config["max_position_embeddings"] = context_cap
        return config

    def offset_divisor(self, config: dict) -> float:
        return float(config[self.site.divide_by]) if self.site.divide_by else 1.0

    def window_short_of_context(self, config: dict) -> int | None:
        """The sliding window, when it is on and shorter than the context (the rewrite is then inexact)."""
        window = self.sliding_window
        if window is None or config.get(window.size) is None:
            return None
        if window.enabled is not None and not config.get(window.enabled):
            return None
        size = int(config[window.size])
        return size if size < int(config.get("max_position_embeddings") or 0) else None

    def grafting(self, where: str) -> Graft:
        """The graft route, or one line that says why this family has none."""
        if self.graft is None:
            reason = self.graft_refused or f"{self.family} has no MLP with gate, up and down biases"
            raise FinsurgError(f"{where}: conditional surgery cannot be baked into {self.architectures[0]}: {reason}")
        return self.graft

    def monitoring(self, where: str) -> Monitor:
        """The monitor's classifier, or one line that says why this family has none."""
        if self.monitor is None:
            reason = self.monitor_refused or self.refused or f"finsurg declares no monitor for {self.family}"
            raise FinsurgError(f"{where}: no stock classifier holds a truncated {self.architectures[0]}: {reason}")
        return self.monitor

    def offset_bias(self, layer: int) -> str:
        return self.site.bias.format(layer=layer)

    def module(self, layer: int) -> str:
        return self.site.module.format(layer=layer)

    def tl_hook(self, layer: int) -> str:
        return self.site.transformer_lens.format(layer=layer)

    def lm_eval_hook(self, layer: int) -> str:
        return self.site.lm_eval.format(layer=layer)

    def block_site(self) -> str:
        """The site's module as a path inside its decoder block ("" for the block itself)."""
        return self._in_block(self.site.module)

    def block_mlp(self) -> str:
        """The grafted MLP as a path inside its decoder block."""
        return self._in_block(self.graft.mlp)

    def _in_block(self, template: str) -> str:
        return template.replace(f"{self.layers}.{{layer}}", "", 1).lstrip(".")

    def embedding_scale(self, config: dict) -> float:
        return float(config.get(self.embedding_multiplier, 1.0)) if self.embedding_multiplier else 1.0

    def logits_divisor(self, config: dict) -> float:
        return float(config.get(self.logits_scaling, 1.0)) if self.logits_scaling else 1.0

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
    return [name for arch in descriptors() if arch.refused is None for name in arch.architectures]


def for_config(config: dict, where: str = "model") -> Architecture:
    """The descriptor of a config.json; unsupported families are refused with one line."""
    archs = config.get("architectures") or []
    for arch in descriptors():
        if set(archs) & set(arch.architectures) or config.get("model_type") in arch.model_types:
            if arch.refused:
                raise FinsurgError(f"{where}: {arch.architectures[0]} cannot be baked exactly: {arch.refused}")
            return arch
    found = ", ".join(archs) or config.get("model_type") or "unknown"
    raise FinsurgError(f"{where}: unsupported architecture {found}; finsurg bakes {', '.join(supported())}")


def by_name(architecture: str) -> Architecture:
    return for_config({"architectures": [architecture]}, architecture)
