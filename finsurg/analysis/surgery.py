"""`finsurg surgery`: apply a recipe as TransformerLens hooks and show before/after behaviour."""

from __future__ import annotations

import json
from pathlib import Path

from finsurg import __version__, progress
from finsurg.analysis.logit_lens import lens_over_probes, unchanged_before
from finsurg.devices import Placement
from finsurg.models.bridge import boot_bridge, greedy
from finsurg.models.loading import encode, load_model, load_tokenizer
from finsurg.models.source import ResolvedModel
from finsurg.packs import Pack
from finsurg.steer.hooks import offset_hooks
from finsurg.steer.recipe import Recipe

RESULTS_NAME = "neuron_surgery_results.json"


def run_surgery(
    model: ResolvedModel,
    recipe: Recipe,
    alpha: float,
    prompts: list[str] | None = None,
    new_tokens: int = 40,
    placement: Placement | None = None,
) -> dict:
    placement = placement or Placement.of("cpu")
    placement.require("surgery", model.config)
    pack = Pack.load(recipe.spec.pack)
    arch = model.arch
    prompts = prompts or pack.surgery_prompts()
    tokenizer = load_tokenizer(model.path)
    hf_model = load_model(model.path, placement.dtype, device=placement.device, max_memory=placement.dispatch)
    bridge = boot_bridge(model.path, hf_model, tokenizer, placement.dtype)
    surgery = recipe.surgery(alpha)
    hooks = offset_hooks(surgery, arch, model.config)
    generations = []
    for text in progress.bar(iterable=prompts, desc="surgery"):
        ids = encode(tokenizer, text)
        before = greedy(bridge, ids, new_tokens)
        after = greedy(bridge, ids, new_tokens, hooks)
        generations.append(
            {
                "prompt": text,
                "before": tokenizer.decode(before, skip_special_tokens=True),
                "after": tokenizer.decode(after, skip_special_tokens=True),
            }
        )
    before = lens_over_probes(bridge, hf_model, arch, tokenizer, pack)
    after = lens_over_probes(bridge, hf_model, arch, tokenizer, pack, surgery)
    return {
        "format": "finsurg.surgery_results/1",
        "finsurg_version": __version__,
        "model": model.name,
        "recipe": recipe.to_dict(),
        "recipe_origin": recipe.origin,
        "alpha": alpha,
        "layers": recipe.layers,
        "generations": generations,
        "logit_lens": {
            "probes": pack.manifest.probes,
            "before": before,
            "after": after,
            "unchanged_before_first_steered_layer": unchanged_before(before, after, min(recipe.layers)),
        },
        "disclaimer": pack.disclaimer,
    }


def write_results(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_NAME
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def format_results(results: dict) -> str:
    lines = [f"Neuron surgery on {results['model']} at alpha={results['alpha']:+g}, layers {results['layers']}", ""]
    for item in results["generations"]:
        lines += [f"Prompt: {item['prompt']}", f"  before: {item['before']!r}", f"  after:  {item['after']!r}", ""]
    lensed = results["logit_lens"]
    groups = list(lensed["before"])
    lines.append(
        f"Logit lens over {len(lensed['probes'])} probes: P({groups[0]}) / P({groups[1]}) per layer, before -> after"
    )
    for layer in range(len(lensed["before"][groups[0]])):
        cells = [f"{g} {lensed['before'][g][layer]:.4f} -> {lensed['after'][g][layer]:.4f}" for g in groups]
        lines.append(f"  layer {layer:3d}  " + "   ".join(cells))
    lines += ["", results["disclaimer"]]
    return "\n".join(lines)
