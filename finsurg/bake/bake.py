"""The bake: a recipe at one alpha becomes bias tensors, exactly.

An offset added to a block's output at every position equals a bias on the projection that
writes that output, once the config turns that family's biases on. Turning them on gives every
layer all of the family's biases, so those the recipe does not steer are written as zeros,
and a base that already has biases keeps them, with the offset added where it steers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from finsurg.steer.arch import Architecture
from finsurg.steer.recipe import Recipe


def bake(
    recipe: Recipe,
    alpha: float,
    arch: Architecture,
    config: dict,
    dtype: torch.dtype,
    existing: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Every bias tensor the variant needs that the base does not already hold unchanged, by name.

    `existing` maps the base's tensor names to tensors (read on demand); only the biases the
    recipe steers are read from it.
    """
    offsets = recipe.offsets(alpha)
    biases: dict[str, torch.Tensor] = {}
    for layer in range(int(config["num_hidden_layers"])):
        site = arch.offset_bias(layer) if layer in offsets else None
        for template, name in zip((b.name for b in arch.biases), arch.bias_names(layer)):
            if name == site:
                current = existing[name].double() if name in existing else 0.0
                biases[name] = (current + offsets[layer].to(dtype).double()).to(dtype)
            elif name not in existing:
                biases[name] = torch.zeros(arch.bias_size(template, config), dtype=dtype)
    return biases
