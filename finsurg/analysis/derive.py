"""Recipe derivation: the steered layer band, the toggle/amplifier/caution dimensions, steering vectors.

Strength is calibrated to the model's own activation scale, so alpha means the same on a 135M
and an 8B model: each neuron moves by a fraction of its own standard deviation, and each steering
vector by a fraction of the residual norm at its layer, both divided by the band width because
offsets accumulate down the stream.
"""

from __future__ import annotations

import torch

from finsurg.analysis.activations import RunningStats
from finsurg.analysis.features import effect_size
from finsurg.steer.arch import by_name
from finsurg.steer.recipe import RECIPE_FORMAT, STEERING_NAME, ModelSpec, Recipe, RecipeSpec

BAND_FRACTION = 0.2
SEED_ALPHA = 3.0  # the derived recipe's default alpha
NEURON_STRENGTH = 0.7  # per-layer shift at alpha=1, in the neuron's own standard deviations × band width
STEERING_STRENGTH = 0.07  # per-layer steering norm at alpha=1, as a fraction of the residual norm × band width
ROLES = (("toggle", 1, 0.5), ("amplifier", 4, 0.3), ("caution", 2, 0.3))


def separation(pos: RunningStats, neg: RunningStats, exclude: set[int]) -> torch.Tensor:
    """Per layer, |mean_pos − mean_neg| relative to the residual norm (excluded dims zeroed)."""
    diff = pos.mean - neg.mean
    scale = residual_norm(pos, neg, exclude)
    keep = torch.ones(diff.shape[1], dtype=torch.bool)
    keep[list(exclude)] = False
    return diff[:, keep].norm(dim=1) / scale


def residual_norm(pos: RunningStats, neg: RunningStats, exclude: set[int]) -> torch.Tensor:
    second = (pos.total_sq + neg.total_sq) / (pos.count + neg.count)
    second[:, list(exclude)] = 0.0
    return second.sum(1).sqrt().clamp_min(1e-6)


def choose_band(score: torch.Tensor, width: int) -> list[int]:
    """The window of `width` consecutive layers with the highest total score.

    The first third is skipped (surface features) and so is the last layer, whose output goes
    straight into the final norm.
    """
    layers = score.shape[0]
    start_min, start_max = layers // 3, max(layers // 3, layers - 1 - width)
    best = max(range(start_min, start_max + 1), key=lambda s: float(score[s : s + width].sum()))
    return list(range(best, best + width))


def band_width(layers: int) -> int:
    return max(2, round(layers * BAND_FRACTION))


def derive(
    pos: RunningStats,
    neg: RunningStats,
    band: list[int],
    exclude: set[int],
    model: ModelSpec,
    names: tuple[str, str],
    pack: str,
) -> Recipe:
    """The seed recipe of the band: the neurons that separate the two categories most, and the mean difference
    as the steering vector, each scaled to a fixed share of its spread at alpha 1."""
    width = len(band)
    effect = effect_size(pos, neg)[band].mean(0)
    effect[list(exclude)] = 0.0
    sigma = ((pos.var + neg.var) / 2).sqrt()[band].mean(0)
    positive, negative = names
    direction = pos.mean - neg.mean
    direction[:, list(exclude)] = 0.0
    scale = residual_norm(pos, neg, exclude)
    vectors = {layer: direction[layer].float().contiguous() for layer in band}
    ratios = [float(scale[layer] / direction[layer].norm().clamp_min(1e-9)) for layer in band]
    coefficient = STEERING_STRENGTH * sum(ratios) / len(ratios) / width
    spec = RecipeSpec.model_validate(
        {
            "format": RECIPE_FORMAT,
            "description": f"Derived by finsurg analyze: {positive} vs {negative}, layers {band[0]}-{band[-1]}.",
            "model": model.model_dump(),
            "layers": band,
            "neurons": _neurons(effect, sigma, width, exclude, names),
            "steering": {"file": STEERING_NAME, "coefficient": round(coefficient, 8)},
            "default_alpha": SEED_ALPHA,
            "pack": pack,
            "site": by_name(model.architecture).site.name,
        }
    )
    return Recipe(spec, vectors, origin="finsurg analyze")


def _neurons(
    effect: torch.Tensor, sigma: torch.Tensor, width: int, exclude: set[int], names: tuple[str, str]
) -> list[dict]:
    """Each role's neurons by effect size, none twice, scaled to their spread over the band's width."""
    neurons, used = [], set()
    for role, count, weight in ROLES:
        if role == "toggle":
            candidates = effect.abs()
        elif role == "amplifier":
            candidates = effect.clamp_min(0)
        else:
            candidates = (-effect).clamp_min(0)
        chosen = 0
        for dim in candidates.argsort(descending=True).tolist():
            if chosen == count:
                break
            if dim in used or dim in exclude or candidates[dim] <= 0:
                continue
            used.add(dim)
            chosen += 1
            sign = 1.0 if effect[dim] > 0 else -1.0
            coefficient = sign * weight * NEURON_STRENGTH * float(sigma[dim]) / width
            neurons.append(
                {
                    "index": dim,
                    "coefficient": round(coefficient, 6),
                    "role": _describe(role, *names, float(effect[dim])),
                }
            )
    return neurons


def _describe(role: str, positive: str, negative: str, effect: float) -> str:
    toward = positive if effect > 0 else negative
    text = {
        "toggle": f"primary {positive}/{negative} toggle",
        "amplifier": f"{positive} amplifier",
        "caution": f"{negative} dimension",
    }[role]
    return f"{text} (effect size {effect:+.2f}, higher for {toward})"
