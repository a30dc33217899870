"""Steering directions, one per layer, and the residual scale that sizes them.

- `seed`: the seed card's method, the difference of mean activations between question categories
  (positive vs negative prompts), read at the last prompt token.
- `caa`: contrastive activation addition, the mean over pairs of (positive answer − negative
  answer) activations, read at the answer tokens.
- `pca`: the first principal component of those paired differences (centred), its sign fixed so
  that the differences project positively on average.

Each direction is a unit vector; a recipe scales it by the residual norm at its layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from finsurg.analysis.batching import chunked, left_pad
from finsurg.analysis.measures import answer_items
from finsurg.packs import AnswerPair
from finsurg.steer.arch import Architecture
from finsurg.steer.hooks import site_outputs

METHODS = {
    "seed": "question-category mean difference at the last prompt token (the seed card's method)",
    "caa": "mean over pairs of the positive − negative answer activation difference",
    "pca": "first principal component of the paired answer differences, sign fixed by the data",
}
POSITIONS = {
    "answer_mean": "the mean over the answer's tokens",
    "answer_last": "the answer's final token",
}


@dataclass
class Contrast:
    """Per pair and layer, the site's output for the positive and the negative answer: [pairs, layers, hidden]."""

    positive: torch.Tensor
    negative: torch.Tensor
    positions: str

    @property
    def differences(self) -> torch.Tensor:
        return (self.positive - self.negative).double()

    def residual_norm(self) -> torch.Tensor:
        """[layers]: the typical norm of the stream at the answer, both answers pooled."""
        return torch.cat([self.positive, self.negative]).double().norm(dim=-1).mean(0)


def read_contrast(
    model,
    tokenizer,
    arch: Architecture,
    pairs: Sequence[AnswerPair],
    positions: str = "answer_mean",
    batch_size: int = 16,
    on_batch=lambda n: None,
) -> Contrast:
    """The site's output at every layer for each pair's two answers, pooled over `positions`."""
    items = answer_items(tokenizer, pairs)
    layers = model.config.num_hidden_layers
    pooled: list[torch.Tensor] = []
    with site_outputs(model, arch) as captured:
        for chunk in chunked(items, batch_size):
            ids, mask = left_pad(tokenizer, [item.context + item.continuation for item in chunk])
            device = model.get_input_embeddings().weight.device
            with torch.inference_mode():
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, logits_to_keep=1)
            stream = torch.stack(
                [captured[layer].float().cpu() for layer in range(layers)], dim=1
            )  # [batch, layers, pos, hidden]
            for row, item in enumerate(chunk):
                answer = stream[row, :, -len(item.continuation) :]
                pooled.append(answer.mean(1) if positions == "answer_mean" else answer[:, -1])
            on_batch(len(chunk))
    stacked = torch.stack(pooled)
    return Contrast(stacked[0::2], stacked[1::2], positions)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return (vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()


def caa(contrast: Contrast) -> torch.Tensor:
    """[layers, hidden] unit directions."""
    return _unit(contrast.differences.mean(0))


def pca(contrast: Contrast) -> torch.Tensor:
    diffs = contrast.differences  # [pairs, layers, hidden]
    directions = []
    for layer in range(diffs.shape[1]):
        centred = diffs[:, layer] - diffs[:, layer].mean(0)
        first = torch.linalg.svd(centred, full_matrices=False).Vh[0]
        if float((diffs[:, layer] @ first).mean()) < 0:
            first = -first
        directions.append(first)
    return _unit(torch.stack(directions))


def seed(positive_mean: torch.Tensor, negative_mean: torch.Tensor, exclude: set[int]) -> torch.Tensor:
    """From question-category means [layers, hidden], massive dimensions excluded."""
    direction = (positive_mean - negative_mean).double()
    direction[:, sorted(exclude)] = 0.0
    return _unit(direction)
