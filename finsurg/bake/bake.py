"""The bake: a surgery's offsets become bias tensors, exactly.

An offset added at a site at every position equals a bias on the projection that writes that
site's output (divided by the multiplier that scales it, where the family has one), once the
variant's config turns that family's biases on. Turning them on gives every
layer all of the family's biases, so those the recipe does not steer are written as zeros,
and a base that already has biases keeps them, with the offset added where it steers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from finsurg.steer.arch import Architecture


def bake(
    offsets: dict[int, torch.Tensor],
    arch: Architecture,
    config: dict,
    dtype: torch.dtype,
    existing: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Every bias tensor the variant needs that the base does not already hold unchanged, by name.

    `offsets` maps a layer to its residual offset (a recipe's `offsets(alpha)`); `existing` maps
    the base's tensor names to tensors (read on demand); only the biases that carry offsets are read.
    """
    biases: dict[str, torch.Tensor] = {}
    divisor = arch.offset_divisor(config)  # a sublayer output scaled by m carries offset / m
    for layer in range(int(config["num_hidden_layers"])):
        site = arch.offset_bias(layer) if layer in offsets else None
        for template, name in zip((b.name for b in arch.biases), arch.bias_names(layer)):
            if name == site:
                current = existing[name].double() if name in existing else 0.0
                biases[name] = (current + offsets[layer].to(dtype).double() / divisor).to(dtype)
            elif name not in existing:
                biases[name] = torch.zeros(arch.bias_size(template, config), dtype=dtype)
    return biases


def largest_alpha(unit_offsets: dict[int, torch.Tensor], arch: Architecture, config: dict, dtype: torch.dtype) -> float:
    """The largest |alpha| whose offsets (`unit_offsets` at alpha 1) stay finite: in float32, as the offsets file
    holds them, and as biases in `dtype` (one rounding step short of its largest value)."""
    peak = max((float(v.double().abs().max()) for v in unit_offsets.values()), default=0.0)
    if peak == 0:
        return math.inf
    as_bias = torch.finfo(dtype).max * (1 - torch.finfo(dtype).eps) * abs(arch.offset_divisor(config))
    return min(torch.finfo(torch.float32).max * (1 - torch.finfo(torch.float32).eps), as_bias) / peak
