"""The logit lens: read the residual stream after every layer through the final norm and unembedding."""

from __future__ import annotations

import json
from importlib import resources

import torch

from finsurg.analysis.bridge import resid_post


def token_sets(tokenizer) -> dict:
    """The shipped probe prompt and the first token id of each advice and caution word."""
    spec = json.loads((resources.files("finsurg") / "data" / "prompts" / "token_sets.json").read_text())
    ids = {}
    for group in ("advice", "caution"):
        first = [tokenizer.encode(word, add_special_tokens=False)[:1] for word in spec[group]]
        ids[group] = sorted({token[0] for token in first if token})
    return {"probe": spec["probe"], "ids": ids}


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
