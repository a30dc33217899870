"""Phase 4, the logit lens: read the residual stream after every layer through the final norm and unembedding."""

from __future__ import annotations

import torch

from finsurg.analysis.bridge import resid_post
from finsurg.analysis.prompts import PromptSet


def token_groups(tokenizer, prompts: PromptSet) -> dict[str, list[int]]:
    """The first token of each positive and negative word, keyed by category name."""
    groups = {}
    for name, words in ((prompts.positive.name, prompts.manifest.tokens.positive),
                        (prompts.negative.name, prompts.manifest.tokens.negative)):
        first = [tokenizer.encode(word, add_special_tokens=False)[:1] for word in words]
        groups[name] = sorted({token[0] for token in first if token})
    return groups


def lens(bridge, hf_model, ids: torch.Tensor, groups: dict[str, list[int]], offsets=None) -> dict[str, list[float]]:
    """Per layer, the total probability of each token group at the final position.

    One hook per layer adds that layer's offset (if any) and records the stream, so the reading
    is taken after the surgery at every layer.
    """
    offsets = offsets or {}
    layers = hf_model.config.num_hidden_layers
    captured: dict[int, torch.Tensor] = {}

    def make(layer: int):
        def hook(resid, hook=None):
            if layer in offsets:
                resid = resid + offsets[layer].to(resid.dtype)
            captured[layer] = resid[0, -1].detach()
            return resid

        return hook

    with torch.no_grad(), bridge.hooks(fwd_hooks=[(resid_post(layer), make(layer)) for layer in range(layers)]):
        bridge(ids)
        stacked = torch.stack([captured[layer] for layer in range(layers)])
        probs = torch.softmax(hf_model.lm_head(hf_model.model.norm(stacked)).float(), dim=-1)
    return {group: [float(probs[layer, token_ids].sum()) for layer in range(layers)] for group, token_ids in groups.items()}


def lens_over_probes(bridge, hf_model, tokenizer, prompts: PromptSet, offsets=None) -> dict[str, list[float]]:
    """The lens averaged over the prompt set's probe prompts (raw text, no chat template)."""
    groups = token_groups(tokenizer, prompts)
    readings = [
        lens(bridge, hf_model, tokenizer(probe, return_tensors="pt").input_ids, groups, offsets)
        for probe in prompts.manifest.probes
    ]
    return {group: [sum(r[group][layer] for r in readings) / len(readings) for layer in range(len(readings[0][group]))]
            for group in groups}


def unchanged_before(before: dict[str, list[float]], after: dict[str, list[float]], first: int) -> bool:
    return all(before[group][:first] == after[group][:first] for group in before)
