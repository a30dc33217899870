"""Phase 2: per-layer differences between categories, ranked by raw size and by effect size.

Massive-activation dimensions (attention sinks, like SmolLM2's 507) dwarf every other dimension,
so a raw ranking would pick them by scale alone. They are detected from their peak magnitude,
flagged, and left out of the rankings and of the derived recipe.
"""

from __future__ import annotations

import torch

from finsurg.analysis.activations import RunningStats

MASSIVE_FACTOR = 20.0
EPS = 1e-6


def effect_size(a: RunningStats, b: RunningStats) -> torch.Tensor:
    """Cohen's d per layer and dimension: (mean_a - mean_b) / pooled standard deviation."""
    return (a.mean - b.mean) / ((a.var + b.var) / 2 + EPS).sqrt()


def massive_dims(groups: list[RunningStats], factor: float = MASSIVE_FACTOR) -> dict[int, float]:
    """Dimensions whose peak |activation| exceeds factor × the layer's median peak, with their worst ratio."""
    peak = torch.stack([g.peak for g in groups]).amax(0)  # [layers, dims]
    ratio = peak / peak.median(dim=1, keepdim=True).values.clamp_min(EPS)
    worst = ratio.amax(0)
    return {int(d): round(float(worst[d]), 1) for d in torch.nonzero(worst > factor).flatten()}


def top_dims(values: torch.Tensor, k: int, exclude: set[int]) -> list[dict]:
    """The k dimensions of a [dims] tensor with the largest |value|, skipping excluded ones."""
    masked = values.abs().clone()
    if exclude:
        masked[list(exclude)] = -1.0
    order = masked.argsort(descending=True)[:k]
    return [{"dim": int(d), "value": round(float(values[d]), 5)} for d in order]


def rank_layers(
    pos: RunningStats, neg: RunningStats, neu: RunningStats, names: tuple[str, str, str], k: int, exclude: set[int]
) -> list[dict]:
    """For every layer: positive − neutral and negative − positive, top dims by raw difference and by effect size."""
    p, n, u = names
    comparisons = {
        f"{p}_minus_{u}": (pos.mean - neu.mean, effect_size(pos, neu)),
        f"{n}_minus_{p}": (neg.mean - pos.mean, effect_size(neg, pos)),
    }
    keep = [d for d in range(pos.mean.shape[1]) if d not in exclude]
    table = []
    for layer in range(pos.mean.shape[0]):
        row = {"layer": layer}
        for label, (raw, effect) in comparisons.items():
            row[label] = {
                "top_raw": top_dims(raw[layer], k, exclude),
                "top_effect": top_dims(effect[layer], k, exclude),
                "norm": round(float(raw[layer, keep].norm()), 4),
            }
        table.append(row)
    return table
