"""Phase 4, the logit lens: read the residual stream after every layer through the final norm and unembedding."""

from __future__ import annotations

import torch

from finsurg.packs import Pack
from finsurg.steer.arch import Architecture
from finsurg.steer.hooks import add_hook, offset_hooks
from finsurg.steer.surgery import Surgery


def token_groups(tokenizer, prompts: Pack) -> dict[str, list[int]]:
    """The first token of each positive and negative word, keyed by category name."""
    groups = {}
    for name, words in (
        (prompts.positive.name, prompts.manifest.tokens.positive),
        (prompts.negative.name, prompts.manifest.tokens.negative),
    ):
        first = [tokenizer.encode(word, add_special_tokens=False)[:1] for word in words]
        groups[name] = sorted({token[0] for token in first if token})
    return groups


def lens(
    bridge,
    hf_model,
    arch: Architecture,
    ids: torch.Tensor,
    groups: dict[str, list[int]],
    surgery: Surgery | None = None,
) -> dict[str, list[float]]:
    """Per layer, the total probability of each token group at the final position.

    One hook per layer adds that layer's offset (zero where it steers nothing) and records the
    stream, so the reading is taken after the surgery at every layer.
    """
    surgery = surgery or Surgery()
    offsets = surgery.always()
    layers = hf_model.config.num_hidden_layers
    zero = torch.zeros(hf_model.config.hidden_size)
    captured: dict[int, torch.Tensor] = {}

    def record(layer: int):
        return lambda resid: captured.__setitem__(layer, resid[0, -1].detach())

    # grafted neurons change their MLP's output, before the record; the sites' offsets are added with it
    hooks = offset_hooks(surgery, arch, hf_model.config.to_dict(), sites=False)
    hooks += [(arch.tl_hook(layer), add_hook(offsets.get(layer, zero), record(layer))) for layer in range(layers)]
    with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
        bridge(ids)
        norm = hf_model.get_submodule(arch.final_norm)
        head = hf_model.get_output_embeddings()
        stacked = torch.stack([captured[layer].to(norm.weight.device) for layer in range(layers)])
        probs = torch.softmax(head(norm(stacked).to(head.weight.device)).float().cpu(), dim=-1)
    return {
        group: [float(probs[layer, token_ids].sum()) for layer in range(layers)] for group, token_ids in groups.items()
    }


def lens_over_probes(
    bridge, hf_model, arch: Architecture, tokenizer, prompts: Pack, surgery: Surgery | None = None
) -> dict[str, list[float]]:
    """The lens averaged over the prompt set's probe prompts (raw text, no chat template)."""
    groups = token_groups(tokenizer, prompts)
    readings = [
        lens(bridge, hf_model, arch, tokenizer(probe, return_tensors="pt").input_ids, groups, surgery)
        for probe in prompts.manifest.probes
    ]
    return {
        group: [sum(r[group][layer] for r in readings) / len(readings) for layer in range(len(readings[0][group]))]
        for group in groups
    }


def unchanged_before(before: dict[str, list[float]], after: dict[str, list[float]], first: int) -> bool:
    return all(before[group][:first] == after[group][:first] for group in before)
