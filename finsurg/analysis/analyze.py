"""`finsurg analyze`: the four analysis phases, the derived recipe, and the alpha sweep."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import torch

from finsurg import DISCLAIMER, __version__, progress
from finsurg.analysis import plots, report
from finsurg.analysis.activations import POOLS, collect, keyword_ids
from finsurg.analysis.batching import ensure_pad_token
from finsurg.analysis.behaviour import TuneOptions, steer_by_answers
from finsurg.analysis.derive import band_width, choose_band, derive, separation
from finsurg.analysis.directions import seed as seed_direction
from finsurg.analysis.features import effect_size, massive_dims, rank_layers
from finsurg.analysis.logit_lens import lens_over_probes, unchanged_before
from finsurg.analysis.sweep import ALPHAS, run_sweep
from finsurg.devices import Placement
from finsurg.errors import FinsurgError
from finsurg.io.atomic import building
from finsurg.models.bridge import boot_bridge
from finsurg.models.loading import load_model, load_tokenizer, prompt_ids
from finsurg.models.source import ResolvedModel
from finsurg.packs import Pack
from finsurg.steer.arch import for_config
from finsurg.steer.recipe import ANALYSIS_NAME

RESULTS_NAME = ANALYSIS_NAME
REPORT_NAME = "report.md"
TOP_HEADS = 10


def parse_layers(text: str | None, depth: int) -> list[int] | None:
    """'20-25' or '20,22,24' → sorted layer list, checked against the model's depth."""
    if not text:
        return None
    try:
        if "-" in text:
            start, end = (int(part) for part in text.split("-", 1))
            layers = list(range(start, end + 1))
        else:
            layers = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise FinsurgError(f"--layers {text!r}: expected a range like 20-25 or a list like 20,22,24") from None
    if not layers or layers[0] < 0 or layers[-1] >= depth:
        raise FinsurgError(f"--layers {text!r} is out of range: the model has layers 0-{depth - 1}")
    return layers


def analyze(
    model: ResolvedModel,
    out_dir: Path,
    behaviour: str | Path | None = None,
    pool: str = "last",
    layers: list[int] | None = None,
    batch_size: int = 16,
    top_k: int = 10,
    alphas: list[float] = ALPHAS,
    overwrite: bool = False,
    tuning: TuneOptions | None = None,
    placement: Placement | None = None,
) -> dict:
    placement = placement or Placement.of("cpu")
    if pool not in POOLS:
        raise FinsurgError(f"unknown --pool {pool!r} (choose from {', '.join(POOLS)})")
    if batch_size < 1:
        raise FinsurgError("--batch-size must be at least 1")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FinsurgError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it")
    prompts = Pack.load(behaviour)
    arch = for_config(model.config, model.name)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    tokenizer = ensure_pad_token(load_tokenizer(model.path))
    placement.require("analyze", model.config)

    def load():
        return load_model(model.path, placement.dtype, device=placement.device, max_memory=placement.dispatch)

    hf_model = load()
    bridge = boot_bridge(model.path, hf_model, tokenizer, placement.dtype)
    timings["load"] = time.perf_counter() - clock

    # phases 1 and 3: activations and keyword attention, one batched pass per category
    clock = time.perf_counter()
    keywords = keyword_ids(tokenizer, prompts.manifest.keywords)
    acts, attention = {}, {}
    total = sum(len(c.train) for c in prompts.categories)
    with progress.bar(total=total, desc="phase 1: activations") as bar:
        for category in prompts.categories:
            sequences = [prompt_ids(tokenizer, text) for text in category.train]
            acts[category.name], attention[category.name] = collect(
                bridge, tokenizer, arch, sequences, pool, batch_size, keywords, bar.update
            )
    timings["activations"] = time.perf_counter() - clock

    # phases 2-4 are quick next to phase 1: one bar steps through them
    steps = progress.bar(total=3, desc="phases 2-4: features, heads, logit lens")

    # phase 2: features
    clock = time.perf_counter()
    pos, neg, neu = (acts[c.name] for c in prompts.categories)
    names = tuple(c.name for c in prompts.categories)
    massive = massive_dims([pos, neg, neu])
    exclude = set(massive)
    table = rank_layers(pos, neg, neu, names, top_k, exclude)
    timings["features"] = time.perf_counter() - clock
    steps.update()

    # phase 4 (before): logit lens, then the band where separation and commitment peak
    clock = time.perf_counter()
    lens_before = lens_over_probes(bridge, hf_model, arch, tokenizer, prompts)
    sep = separation(pos, neg, exclude)
    commitment = torch.tensor(
        [sum(values[layer] for values in lens_before.values()) for layer in range(model.num_layers)]
    )
    if layers is None:
        score = sep / sep.max() + commitment / commitment.max().clamp_min(1e-12)
        band = choose_band(score, band_width(model.num_layers))
        reason = "where the normalised difference plus logit-lens commitment peaks"
    else:
        band, reason = layers, "chosen with --layers"
    recipe = derive(pos, neg, band, exclude, model.architecture, names[:2], prompts.source)
    timings["logit_lens"] = time.perf_counter() - clock
    steps.update()

    # phase 3 summary: heads
    head_diff = (attention[names[0]].mean - attention[names[2]].mean).float()
    order = head_diff.flatten().abs().argsort(descending=True)[:TOP_HEADS]
    heads = [
        {
            "layer": int(i) // head_diff.shape[1],
            "head": int(i) % head_diff.shape[1],
            "difference": float(head_diff.flatten()[i]),
        }
        for i in order
    ]
    steps.update()
    steps.close()

    behaviour = None
    if tuning is not None:  # phases 6-8: answer-behaviour directions, tuned, judged on held-out items
        # the bridge has changed hf_model's modules: tuning gets a fresh model, and only one is in memory
        del bridge, hf_model
        gc.collect()
        answer_model = load()
        recipe, behaviour = steer_by_answers(
            answer_model,
            tokenizer,
            arch,
            prompts,
            recipe,
            seed_direction(pos.mean, neg.mean, exclude),
            tuning,
            model.architecture,
        )
        hf_model = answer_model
        bridge = boot_bridge(model.path, hf_model, tokenizer, placement.dtype)
        band = recipe.layers
        chosen = behaviour["tuning"]["chosen"]
        reason = (
            f"tuned: trial {chosen['trial']} ({chosen['method']}), the largest two-sided shift on the tune "
            f"split within KL {tuning.kl_budget:g}"
        )
        timings.update({f"behaviour_{k}": v for k, v in behaviour.pop("timings").items()})
    clock = time.perf_counter()
    lens_after = lens_over_probes(bridge, hf_model, arch, tokenizer, prompts, recipe.offsets(recipe.spec.default_alpha))
    timings["logit_lens"] += time.perf_counter() - clock

    clock = time.perf_counter()
    sweep = run_sweep(bridge, tokenizer, arch, prompts, recipe, alphas, batch_size) if alphas else {}  # phase 5
    timings["sweep"] = time.perf_counter() - clock

    results = {
        "format": "finsurg.mech_interp/1",
        "finsurg_version": __version__,
        "model": model.name,
        "pack": prompts.source,
        "categories": {"positive": names[0], "negative": names[1], "neutral": names[2]},
        "train_prompts": {c.name: len(c.train) for c in prompts.categories},
        "pool": pool,
        "pool_description": POOLS[pool],
        "massive_dims": {str(d): r for d, r in massive.items()},
        "separation_per_layer": [round(float(v), 5) for v in sep],
        "band_reason": reason,
        "features": table,
        "heads": {"differential": head_diff.tolist(), "top": heads},
        "logit_lens": {
            "probes": prompts.manifest.probes,
            "alpha": recipe.spec.default_alpha,
            "before": lens_before,
            "after": lens_after,
            "unchanged_before_first_steered_layer": unchanged_before(lens_before, lens_after, band[0]),
        },
        "recipe": recipe.to_dict(),
        "sweep": sweep,
        "behaviour": behaviour,
        "timings": timings,
        "disclaimer": DISCLAIMER,
    }
    with building(out_dir) as partial:
        recipe.save(partial)
        plot_dir = partial / "plots"
        plot_dir.mkdir()
        effect = effect_size(pos, neg).float()
        effect[:, list(exclude)] = 0.0
        dims = effect[band].abs().mean(0).argsort(descending=True)[:40].tolist()
        made = [
            plots.dimension_heatmap(
                effect, dims, band, f"{names[0]} − {names[1]}: top dimensions", plot_dir / "dimension_heatmap.png"
            ),
            plots.head_heatmap(
                head_diff, f"attention to keywords, {names[0]} − {names[2]}", plot_dir / "head_heatmap.png"
            ),
            plots.lens_curves(lens_before, lens_after, band, recipe.spec.default_alpha, plot_dir / "logit_lens.png"),
        ]
        if sweep:
            made.append(plots.sweep_plot(sweep["rows"], names[0], plot_dir / "alpha_sweep.png"))
        if behaviour:
            tuned = behaviour["tuning"]
            made.append(
                plots.pareto_plot(
                    tuned["trials"], tuned["pareto"], tuned["chosen"], tuned["budget"], plot_dir / "pareto.png"
                )
            )
            made.append(plots.item_plot(behaviour["heldout"], plot_dir / "heldout_items.png"))
        results["plots"] = [p.name for p in made]
        (partial / RESULTS_NAME).write_text(json.dumps(results, indent=2) + "\n")
        (partial / REPORT_NAME).write_text(report.render(results))
    return results
