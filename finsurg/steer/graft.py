"""Conditional surgery: an offset that fires only where a topic condition holds, as SwiGLU neurons.

A gate reads what the MLP reads, its normed input x̂: z = w·x̂ + b, with w = sharpness × the
condition's unit direction and b = −sharpness × its threshold. Two neurons per gated layer, whose
up projection is exactly 1 (zero weights, bias 1), compute silu(z + RAMP) − silu(z − RAMP): about
0 far below the threshold, RAMP at it, 2·RAMP far above. Their down columns ±offset / (2·RAMP) add
offset × s(z), with s rising from 0 to 1. 2·RAMP is a power of two, so that division is exact in
every float dtype. Hooks and the bake both compute `Neurons.output`, so a variant equals its hooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

RAMP = 4.0  # the two SiLU ramps sit at z ± RAMP; s(z) is within 2% of 0 or 1 beyond |z| ≈ 8
NEURONS = 2  # per gated layer
ALIGN = 32  # every layer grows by this many neurons: a whole GGUF quant block, and an aligned kernel width


@dataclass(frozen=True)
class Gate:
    """One layer's condition, as the gate neurons read it: z = weight · x̂ + bias."""

    weight: torch.Tensor  # [hidden] float32
    bias: float  # a float32 value: what a variant records is what it baked

    def __post_init__(self) -> None:
        object.__setattr__(self, "bias", float(torch.tensor(self.bias, dtype=torch.float32)))

    def score(self, normed: torch.Tensor) -> torch.Tensor:
        return normed.float() @ self.weight + self.bias

    def opening(self, normed: torch.Tensor) -> torch.Tensor:
        """s(z) in [0, 1] (up to the SiLU's small dip below zero), per position."""
        z = self.score(normed).double()
        return ((F.silu(z + RAMP) - F.silu(z - RAMP)) / (2 * RAMP)).float()


@dataclass(frozen=True)
class Neurons:
    """The grafted neurons of one layer, rounded to the variant's dtype and held in float32."""

    gate_weight: torch.Tensor  # [NEURONS, hidden]
    gate_bias: torch.Tensor  # [NEURONS]
    down: torch.Tensor  # [hidden, NEURONS]

    @classmethod
    def joined(cls, parts: list[Neurons]) -> Neurons:
        """Several gates' neurons side by side in one layer."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            torch.cat([p.gate_weight for p in parts]),
            torch.cat([p.gate_bias for p in parts]),
            torch.cat([p.down for p in parts], dim=1),
        )

    def output(self, normed: torch.Tensor) -> torch.Tensor:
        """What they add to the MLP's output (before any residual multiplier), in `normed`'s dtype."""
        dtype = normed.dtype
        active = F.silu(normed @ self.gate_weight.to(normed.device, dtype).T + self.gate_bias.to(normed.device, dtype))
        return active @ self.down.to(normed.device, dtype).T


def neurons(gate: Gate, offset: torch.Tensor, dtype: torch.dtype, divisor: float = 1.0) -> Neurons:
    """The two neurons that add `offset` × s(z); `divisor` scales the MLP's output where the family does."""
    weight = gate.weight.to(dtype).float()
    bias = torch.tensor([gate.bias + RAMP, gate.bias - RAMP], dtype=torch.float64).to(dtype).float()
    column = (offset.double() / divisor / (2 * RAMP)).to(dtype).float()
    return Neurons(torch.stack([weight, weight]), bias, torch.stack([column, -column], dim=1))
