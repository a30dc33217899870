"""The bake: a surgery's offsets become bias tensors, and its gated offsets grafted neurons, exactly.

An offset added at a site at every position equals a bias on the projection that writes that
site's output (divided by the multiplier that scales it, where the family has one), once the
variant's config turns that family's biases on. Turning them on gives every
layer all of the family's biases, so those the recipe does not steer are written as zeros,
and a base that already has biases keeps them, with the offset added where it steers.

A gated offset (finsurg.steer.graft) is two neurons appended to its layer's MLP. A config has one
MLP width, so every layer grows by the same count, with exact zeros where nothing is grafted: the
gate, up and down weights of every layer are the base's with rows (or columns) appended, built
only when read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import torch

from finsurg.dtypes import CODE_OF
from finsurg.io.safetensors_io import Entry, tensor_bytes
from finsurg.steer.arch import Architecture
from finsurg.steer.graft import Neurons
from finsurg.steer.surgery import Surgery


class Baked(Mapping):
    """The tensors a variant holds that its base does not hold unchanged, by name; grown weights are built on access."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.grown: dict[str, tuple[tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self.tensors:
            return self.tensors[name]
        return self.grown[name][2]()

    def __iter__(self) -> Iterator[str]:
        yield from self.tensors
        yield from self.grown

    def __len__(self) -> int:
        return len(self.tensors) + len(self.grown)

    def __contains__(self, name: object) -> bool:
        return name in self.tensors or name in self.grown

    def entry(self, name: str) -> Entry:
        """The tensor to write, built when the writer reaches it."""
        if name in self.tensors:
            return Entry.of(name, self.tensors[name])
        shape, dtype, build = self.grown[name]
        return Entry(name, CODE_OF[dtype], shape, lambda: [tensor_bytes(build())])


def bake(
    surgery: Surgery, arch: Architecture, config: dict, dtype: torch.dtype, existing: Mapping[str, torch.Tensor]
) -> Baked:
    """Every tensor the variant needs that the base does not already hold unchanged, by name.

    `surgery`'s ungated steers become biases, its gated ones grafted neurons; `existing` maps the base's tensor
    names to tensors (read on demand, and with `.info(name)` for a grown weight's shape); only the biases
    that carry offsets are read.
    """
    baked = Baked()
    divisor = arch.offset_divisor(config)  # a sublayer output scaled by m carries offset / m
    always, grafts = surgery.always(), surgery.neurons(dtype, divisor)
    grown = surgery.graft_width()
    sizes = {**config, arch.graft.width: int(config[arch.graft.width]) + grown} if grown else config
    for layer in range(int(config["num_hidden_layers"])):
        site = arch.offset_bias(layer) if layer in always else None
        for template, name in zip((b.name for b in arch.biases), arch.bias_names(layer)):
            if name == site:
                current = existing[name].double() if name in existing else 0.0
                baked.tensors[name] = (current + always[layer].to(dtype).double() / divisor).to(dtype)
            elif name not in existing:
                baked.tensors[name] = torch.zeros(arch.bias_size(template, sizes), dtype=dtype)
        if grown:
            widths = (int(config[arch.graft.width]), grown)
            _graft(baked, arch, layer, grafts.get(layer), existing, dtype, widths)
    return baked


def _graft(baked: Baked, arch: Architecture, layer: int, graft: Neurons | None, existing, dtype, widths) -> None:
    """Layer `layer`'s MLP, `widths` (the base's width, the neurons it grows by), grown: the graft's neurons
    first, zeros after."""
    width, grown = widths
    names = arch.graft.names(layer)
    hidden = existing.info(f"{names['gate']}.weight").shape[1]
    gate_rows, gate_bias = torch.zeros(grown, hidden), torch.zeros(grown)
    up_bias, down_columns = torch.zeros(grown), torch.zeros(hidden, grown)
    if graft is not None:
        count = graft.gate_bias.shape[0]
        gate_rows[:count], gate_bias[:count] = graft.gate_weight, graft.gate_bias
        up_bias[:count] = 1.0  # the up projection is exactly 1 on the graft's neurons
        down_columns[:, :count] = graft.down
    for role, extra in (("gate", gate_bias), ("up", up_bias)):
        name = f"{names[role]}.bias"
        current = existing[name].to(dtype) if name in existing else torch.zeros(width, dtype=dtype)
        baked.tensors[name] = torch.cat([current, extra.to(dtype)])
    for role, extra, axis in (("gate", gate_rows, 0), ("up", torch.zeros(grown, hidden), 0), ("down", down_columns, 1)):
        name = f"{names[role]}.weight"
        shape = list(existing.info(name).shape)
        shape[axis] += grown
        baked.grown[name] = (
            tuple(shape),
            dtype,
            lambda name=name, extra=extra, axis=axis: torch.cat([existing[name].to(dtype), extra.to(dtype)], dim=axis),
        )


def largest_alpha(unit: Surgery, arch: Architecture, config: dict, dtype: torch.dtype) -> float:
    """The largest |alpha| whose offsets (`unit`, the surgery at alpha 1) stay finite: in float32, as the offsets
    file holds them, and as biases in `dtype` (one rounding step short of its largest value)."""
    peak = max((float(s.offset.double().abs().max()) for s in unit.steers), default=0.0)
    if peak == 0:
        return math.inf
    as_bias = torch.finfo(dtype).max * (1 - torch.finfo(dtype).eps) * abs(arch.offset_divisor(config))
    return min(torch.finfo(torch.float32).max * (1 - torch.finfo(torch.float32).eps), as_bias) / peak
