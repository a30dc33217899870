"""The offset hooks of a surgery, in TransformerLens and in plain PyTorch.

Every place that applies a surgery at inference time uses these two: `offset_hooks` for a
TransformerLens bridge and `offsets_added` for a plain transformers model. Where they land comes
from the architecture descriptor. Gated steers' grafted neurons (finsurg.steer.graft) are added to
the MLP's output, computed from its input, as the bake's neurons do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from finsurg.steer.arch import Architecture
from finsurg.steer.graft import Neurons
from finsurg.steer.surgery import Surgery

HookList = list[tuple[str, Callable]]


def add_hook(vector: torch.Tensor, then: Callable[[torch.Tensor], None] | None = None) -> Callable:
    """A TransformerLens hook that adds vector at every position (and hands the result to `then`)."""

    def hook(activation: torch.Tensor, hook=None) -> torch.Tensor:
        shifted = activation + vector.to(activation.device, activation.dtype)
        if then is not None:
            then(shifted)
        return shifted

    return hook


def offset_hooks(
    surgery: Surgery, arch: Architecture, config: dict, dtype: torch.dtype = torch.float32, sites: bool = True
) -> HookList:
    """TransformerLens hooks of a surgery: its ungated offsets at their layer's site (unless `sites` is off), its
    gated steers' neurons (rounded to `dtype`) on their MLP."""
    hooks = [(arch.tl_hook(layer), add_hook(vector)) for layer, vector in surgery.always().items()] if sites else []
    grafts = surgery.neurons(dtype, arch.offset_divisor(config))
    route = arch.grafting(arch.family) if grafts else None
    for layer, graft in grafts.items():
        seen: list[torch.Tensor] = []

        def keep(activation, hook=None, seen=seen):
            seen[:] = [activation]
            return activation

        def add(activation, hook=None, seen=seen, graft=graft):
            return activation + graft.output(seen[0]).to(activation.dtype)

        hooks += [
            (route.transformer_lens_input.format(layer=layer), keep),
            (route.transformer_lens_output.format(layer=layer), add),
        ]
    return hooks


def shift_output(vector: torch.Tensor) -> Callable:
    """A plain PyTorch forward hook that adds vector to a module's output (the first item of a tuple)."""

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].device, output[0].dtype), *output[1:])
        return output + vector.to(output.device, output.dtype)

    return hook


def graft_output(graft: Neurons) -> Callable:
    """A plain PyTorch forward hook on an MLP: the grafted neurons' output on its input, added to its output."""

    def hook(module, inputs, output):
        return output + graft.output(inputs[0]).to(output.dtype)

    return hook


@contextmanager
def offsets_added(model, surgery: Surgery, arch: Architecture, dtype: torch.dtype = torch.float32) -> Iterator[None]:
    """Plain PyTorch forward hooks on a transformers model: ungated offsets added to their site's output, gated
    steers' neurons (rounded to `dtype`) to their MLP's."""
    handles = [
        model.get_submodule(arch.module(layer)).register_forward_hook(shift_output(vector))
        for layer, vector in surgery.always().items()
    ]
    grafts = surgery.neurons(dtype, arch.offset_divisor(model.config.to_dict()))
    mlp = arch.grafting(arch.family).mlp if grafts else ""
    handles += [
        model.get_submodule(mlp.format(layer=layer)).register_forward_hook(graft_output(graft))
        for layer, graft in grafts.items()
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def site_outputs(model, arch: Architecture) -> Iterator[dict[int, torch.Tensor]]:
    """Plain PyTorch forward hooks that record every layer's output at the site, by layer, per forward pass."""
    captured: dict[int, torch.Tensor] = {}

    def make(layer: int):
        def hook(module, inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [
        model.get_submodule(arch.module(layer)).register_forward_hook(make(layer))
        for layer in range(model.config.num_hidden_layers)
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
