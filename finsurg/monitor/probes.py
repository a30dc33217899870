"""The monitor's two probes, `topic` and `behaviour`, read at one layer's MLP input at the last token (where
transformers and vLLM pool), learnt on the pack's train split, thresholded on tune and judged on held-out.

A conditional recipe's topic condition is the `topic` probe: its direction at a gated layer is reused, not
learnt again. Elsewhere the topic direction, and always the behaviour direction, are learnt with the same
logistic fit the condition uses (finsurg.analysis.topic_probes.fit).

A stock classifier's head has no bias. The normed MLP input has a near-constant component along its mean
direction, so each probe's intercept is folded onto that direction: the head's raw logit then reads as the
probe's log-odds, and sigmoid scores from any stack are usable as they come. The fold is approximate; the
thresholds are set on the head's own logits, so nothing downstream depends on its accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict

from finsurg import progress
from finsurg.analysis.batching import chunked
from finsurg.analysis.topic_probes import Probe, auroc, fit
from finsurg.monitor.labelled import Labelled, bundle_labelled, labelled
from finsurg.monitor.monitor_options import MonitorOptions
from finsurg.packs import Pack
from finsurg.steer.arch import Monitor
from finsurg.steer.bundle import Bundle

SPLITS = ("train", "tune", "heldout")


class _Enough(Exception):
    """Raised by the deepest hook: the layers after it are not needed."""


def last_token_inputs(
    model, tokenizer, monitor: Monitor, texts: Sequence[str], layers: Sequence[int], batch_size: int
) -> dict[int, torch.Tensor]:
    """Each layer's MLP input at each text's last token, float32, [texts, hidden] per layer."""
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def keep(layer):
        def hook(module, args):
            captured[layer] = args[0][:, -1].detach().float()
            if layer == deepest:
                raise _Enough

        return hook

    handles = [
        model.get_submodule(monitor.mlp.format(layer=layer)).register_forward_pre_hook(keep(layer)) for layer in layers
    ]
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    device = model.get_input_embeddings().weight.device
    try:
        for chunk in chunked(list(texts), batch_size):
            batch = tokenizer(list(chunk), padding=True, padding_side="left", return_tensors="pt")
            try:
                with torch.inference_mode():
                    model(**{k: v.to(device) for k, v in batch.items()}, use_cache=False)
            except _Enough:
                pass
            for layer in layers:
                rows[layer].append(captured[layer].cpu())
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.cat(parts) for layer, parts in rows.items()}


def _labelled_inputs(model, tokenizer, monitor: Monitor, sets: Labelled, layers, batch_size: int) -> dict:
    """Each label's (positives, negatives) inputs by layer; a text both labels use (an exchange is both a topic
    and a behaviour example) runs once."""
    texts = list(dict.fromkeys(text for label in sets.labels for side in sets[label] for text in side))
    row = {text: index for index, text in enumerate(texts)}
    inputs = last_token_inputs(model, tokenizer, monitor, texts, layers, batch_size)
    return {
        label: tuple(
            {layer: rows[torch.tensor([row[text] for text in side])] for layer, rows in inputs.items()}
            for side in sets[label]
        )
        for label in sets.labels
    }


def calibrated(direction: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, seed: int) -> Probe:
    """A fixed direction with the scale and threshold of a one-feature logistic fit along it."""
    along = fit((positive @ direction)[:, None], (negative @ direction)[:, None], seed)
    sign = float(along.direction[0])
    return Probe(sign * direction, along.threshold, along.scale)


def folded(probe: Probe, features: torch.Tensor) -> torch.Tensor:
    """The head row whose bias-free logit approximates the probe's: its intercept carried by the mean direction."""
    mean = features.double().mean(0)
    unit = mean / mean.norm()
    level = float((features.double() @ unit).mean())
    row = probe.scale * probe.direction.double() - (probe.scale * probe.threshold / level) * unit
    return row.float()


def youden_threshold(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The logit cut that maximises TPR − FPR; among equals, the one nearest 0 (the probe's own boundary)."""
    scores = torch.cat([positive, negative]).double().sort().values
    cuts = torch.cat([scores[:1] - 1, (scores[1:] + scores[:-1]) / 2, scores[-1:] + 1])
    tpr = (positive.double()[None, :] > cuts[:, None]).double().mean(1)
    fpr = (negative.double()[None, :] > cuts[:, None]).double().mean(1)
    gain = tpr - fpr
    best = gain.max()
    candidates = cuts[gain >= best - 1e-12]
    return float(candidates[candidates.abs().argmin()])


class Rates(BaseModel):
    """One label's probe on one split: AUROC, and the true and false positive rates at its threshold."""

    model_config = ConfigDict(extra="forbid")

    auroc: float
    tpr: float
    fpr: float
    positives: int
    negatives: int


def rates(positive: torch.Tensor, negative: torch.Tensor, threshold: float) -> Rates:
    return Rates(
        auroc=auroc(positive, negative),
        tpr=float((positive > threshold).double().mean()),
        fpr=float((negative > threshold).double().mean()),
        positives=len(positive),
        negatives=len(negative),
    )


@dataclass
class Trained:
    """The chosen layer, the head (one row per label, in `labels` order) and what the splits said of it."""

    labels: list[str]
    layer: int
    head: torch.Tensor  # [labels, hidden], float32
    thresholds: dict[str, float]
    topic_source: str  # "condition" (the recipe's topic condition), "fitted", or "none" (no topic label)
    layers: dict[int, dict] = field(default_factory=dict)  # per candidate layer: tune and held-out AUROC
    heldout: dict[str, Rates] = field(default_factory=dict)  # per label
    tune: dict[str, Rates] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)


def candidate_layers(bundle: Bundle, depth: int) -> list[int]:
    """Where every recipe is conditional, its gated layers (the topic probes live there); else the upper two
    thirds."""
    recipes = [member.recipe for member in bundle.members]
    if all(recipe.conditional for recipe in recipes):
        return sorted({layer for recipe in recipes for layer in recipe.layers})
    return list(range(depth // 3, depth))


def train(
    model,
    tokenizer,
    monitor: Monitor,
    bundle: Bundle,
    packs: dict[str, Pack],
    dtype: torch.dtype,
    options: MonitorOptions,
) -> Trained:
    """The probes at each candidate layer, as the checkpoint will store them (rounded to `dtype`); the layer
    whose worst label is best on tune; thresholds from tune; figures from held-out. One pack has the labels
    `topic` and `behaviour`; a bundle has both per pack (finsurg.monitor.labelled)."""
    seed = options.seed
    layers = candidate_layers(bundle, model.config.num_hidden_layers)
    splits, topics = _splits(bundle, packs, tokenizer)
    labels = list(splits["train"].labels)
    features: dict[str, dict[str, tuple[dict, dict]]] = {}
    with progress.bar(total=len(splits), desc="monitor: last-token MLP inputs") as bar:
        for split, sets in splits.items():
            features[split] = _labelled_inputs(model, tokenizer, monitor, sets, layers, options.batch_size)
            bar.update()

    def condition(label: str, layer: int) -> torch.Tensor | None:
        """A topic label's recipe condition at a layer it gates: reused, not learnt again."""
        recipe = topics.get(label)
        return recipe.conditions[layer].float() if recipe is not None and layer in recipe.conditions else None

    def heads(layer: int) -> torch.Tensor:
        rows = []
        for label in labels:
            positive, negative = (side[layer] for side in features["train"][label])
            direction = condition(label, layer)
            direction = fit(positive, negative, seed).direction if direction is None else direction
            probe = calibrated(direction, positive, negative, seed)
            rows.append(folded(probe, torch.cat([positive, negative])))
        return torch.stack(rows).to(dtype).float()

    def logits(split: str, label: str, layer: int, head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        row = head[labels.index(label)]
        return tuple(side[layer] @ row for side in features[split][label])

    built = {layer: heads(layer) for layer in layers}
    per_layer = {
        layer: {
            f"{split}_{label}_auroc": auroc(*logits(split, label, layer, head))
            for split in ("tune", "heldout")
            for label in labels
        }
        for layer, head in built.items()
    }
    # chosen on tune (the worst label's AUROC); ties go to the earliest layer, the cheapest monitor
    chosen = max(layers, key=lambda layer: (min(per_layer[layer][f"tune_{lb}_auroc"] for lb in labels), -layer))
    head = built[chosen]
    thresholds = {label: youden_threshold(*logits("tune", label, chosen, head)) for label in labels}
    return Trained(
        labels=labels,
        layer=chosen,
        head=head,
        thresholds=thresholds,
        topic_source=_topic_source([condition(label, chosen) is not None for label in labels if _is_topic(label)]),
        layers=per_layer,
        heldout={label: rates(*logits("heldout", label, chosen, head), thresholds[label]) for label in labels},
        tune={label: rates(*logits("tune", label, chosen, head), thresholds[label]) for label in labels},
        counts={split: sets.counts() for split, sets in splits.items()},
    )


def _splits(bundle: Bundle, packs: dict[str, Pack], tokenizer) -> tuple[dict, dict]:
    """Each split's labelled conversations, and the recipe whose condition a topic label reuses: one pack's. A
    bundle's conditions each learnt their topic against their own pack's off-topic data alone: learnt again."""
    if len(packs) == 1:
        pack = next(iter(packs.values()))
        return {split: labelled(pack, split, tokenizer) for split in SPLITS}, {"topic": bundle.primary.recipe}
    return {split: bundle_labelled(packs, split, tokenizer) for split in SPLITS}, {}


def _is_topic(label: str) -> bool:
    return label == "topic" or label.endswith("_topic")


def _topic_source(reused: list[bool]) -> str:
    if not reused:
        return "none"
    return "condition" if all(reused) else "fitted"
