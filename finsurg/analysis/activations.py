"""Phase 1: residual-stream activations per prompt category, kept as running statistics.

Only sums are kept (mean, variance and peak per layer and dimension), so memory does not grow
with the number of prompts. Attention from the final position to keyword tokens (phase 3) is
accumulated in the same batched pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from finsurg.steer.arch import Architecture

POOLS = {
    "last": "the final token of the rendered prompt (where the answer starts)",
    "mean": "the mean over every real token except the first (an attention sink)",
}


@dataclass
class RunningStats:
    """Sums over samples of a [layers, dims] quantity, in float64."""

    count: int
    total: torch.Tensor
    total_sq: torch.Tensor
    peak: torch.Tensor

    @classmethod
    def empty(cls, layers: int, dims: int) -> RunningStats:
        zeros = torch.zeros(layers, dims, dtype=torch.float64)
        return cls(0, zeros.clone(), zeros.clone(), zeros.clone())

    def update(self, batch: torch.Tensor) -> None:
        """batch: [samples, layers, dims]."""
        batch = batch.double()
        self.count += batch.shape[0]
        self.total += batch.sum(0)
        self.total_sq += batch.pow(2).sum(0)
        self.peak = torch.maximum(self.peak, batch.abs().amax(0))

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    @property
    def var(self) -> torch.Tensor:
        return (self.total_sq / self.count - self.mean.pow(2)).clamp_min(0.0)


def keyword_ids(tokenizer, keywords: list[str]) -> set[int]:
    """First token of each keyword, with and without a leading space."""
    ids = set()
    for word in keywords:
        for form in (word, " " + word, word.lower(), " " + word.lower()):
            tokens = tokenizer.encode(form, add_special_tokens=False)
            if tokens:
                ids.add(tokens[0])
    return ids


def pool(resid: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """resid: [batch, pos, dims] left-padded → [batch, dims]."""
    if how == "last":
        return resid[:, -1]
    keep = mask.clone()
    first = mask.shape[1] - mask.sum(1)
    keep[torch.arange(mask.shape[0]), first] = 0
    weights = keep.unsqueeze(-1).to(resid.dtype)
    return (resid * weights).sum(1) / weights.sum(1).clamp_min(1)


def collect(
    bridge,
    arch: Architecture,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    how: str,
    keywords: set[int],
    on_batch: Callable[[int], None] = lambda n: None,
) -> tuple[RunningStats, RunningStats]:
    """Activation stats [layers, hidden] at the architecture's site, and keyword-attention stats [layers, heads],
    over left-padded batches (finsurg.analysis.batching.padded)."""
    config = bridge.cfg
    layers, heads = config.n_layers, config.n_heads
    acts = RunningStats.empty(layers, config.d_model)
    attention = RunningStats.empty(layers, heads)
    keyword_tensor = torch.tensor(sorted(keywords), dtype=torch.long)
    site = [arch.tl_hook(layer) for layer in range(layers)]
    wanted = set(site) | {f"blocks.{layer}.attn.hook_pattern" for layer in range(layers)}
    for ids, mask in batches:
        with torch.no_grad():
            _, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=lambda name: name in wanted)
        acts.update(torch.stack([pool(cache[site[layer]].cpu(), mask, how) for layer in range(layers)], dim=1))
        is_keyword = torch.isin(ids, keyword_tensor) & mask.bool()
        mass = torch.stack(
            [
                (cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1, :].cpu() * is_keyword[:, None, :]).sum(-1)
                for layer in range(layers)
            ],
            dim=1,
        )
        attention.update(mass)
        on_batch(ids.shape[0])
    return acts, attention
