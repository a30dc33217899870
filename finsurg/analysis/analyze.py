"""`finsurg analyze`: the four analysis phases, the derived recipe, and the alpha sweep."""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from finsurg import __version__, progress
from finsurg.analysis import plots, report
from finsurg.analysis.activations import POOLS, collect, keyword_ids
from finsurg.analysis.batching import ensure_pad_token, padded
from finsurg.analysis.behaviour import Steered, steer_by_answers
from finsurg.analysis.context import AnalysisContext
from finsurg.analysis.derive import band_width, choose_band, derive, separation
from finsurg.analysis.directions import seed as seed_direction
from finsurg.analysis.features import effect_size, massive_dims, rank_layers
from finsurg.analysis.logit_lens import lens_over_probes, unchanged_before
from finsurg.analysis.options import AnalysisOptions
from finsurg.analysis.sweep import run_sweep
from finsurg.devices import Placement
from finsurg.errors import FinsurgError
from finsurg.io.atomic import building
from finsurg.jsonfile import write_json
from finsurg.models.bridge import boot_bridge
from finsurg.models.loading import load_model, load_tokenizer, prompt_ids
from finsurg.models.source import ResolvedModel
from finsurg.packs import Pack
from finsurg.steer.findings import Findings
from finsurg.steer.recipe import ANALYSIS_NAME, ModelSpec, Recipe

REPORT_NAME = "report.md"
SPLITS_NAME = "splits.json"  # the pairs' splits, where the pack's file had none
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


@dataclass
class Analysis:
    """What `finsurg analyze` made: the recipe, the results of phases 1-5 and the answer-behaviour findings, all of
    which it wrote to mech_interp_results.json."""

    recipe: Recipe
    results: dict
    findings: Findings | None
    out: Path


@dataclass
class _Loaded:
    """The model under analysis: transformers, and the TransformerLens bridge over it."""

    model: ResolvedModel
    placement: Placement
    tokenizer: object
    hf_model: object = None
    bridge: object = None

    def load(self) -> None:
        """A fresh model and its bridge (booting the bridge changes the model's modules, so tuning reloads)."""
        self.hf_model = self.bridge = None
        gc.collect()
        path, placement = self.model.path, self.placement
        self.hf_model = load_model(path, placement.dtype, device=placement.device, max_memory=placement.dispatch)

    def boot(self) -> None:
        self.bridge = boot_bridge(self.model.path, self.hf_model, self.tokenizer, self.placement.dtype)


@dataclass
class _Features:
    """Phase 2 on the pooled activations of the three categories."""

    pos: object
    neg: object
    neu: object
    names: tuple[str, ...]
    massive: dict
    table: dict

    @property
    def exclude(self) -> set[int]:
        return set(self.massive)


def analyze(model: ResolvedModel, options: AnalysisOptions, placement: Placement | None = None) -> Analysis:
    """Phases 1-4 on the pack's question categories, the derived recipe, then tuning (6-8) or the sweep (5)."""
    placement = placement or Placement.of("cpu")
    out_dir = options.out
    pack = _refused_early(model, options, placement)
    layers = parse_layers(options.layers, model.num_layers)
    arch = model.arch
    timings: dict[str, float] = {}
    with progress.timed(timings, "load"):
        loaded = _Loaded(model, placement, ensure_pad_token(load_tokenizer(model.path)))
        loaded.load()
        loaded.boot()
    with progress.timed(timings, "activations"):
        acts, attention = _activations(loaded, arch, pack, options)
    steps = progress.bar(total=3, desc="phases 2-4: features, heads, logit lens")  # quick next to phase 1
    with progress.timed(timings, "features"):
        features = _features(acts, pack, options.top_k)
    steps.update()
    with progress.timed(timings, "logit_lens"):
        lens_before = lens_over_probes(loaded.bridge, loaded.hf_model, arch, loaded.tokenizer, pack)
        band, reason, sep = _band(features, lens_before, layers, model.num_layers)
        spec = ModelSpec(
            architecture=model.architecture,
            hidden_size=model.hidden_size,
            num_hidden_layers=model.num_layers,
            weights_sha256=model.weights_sha256(),
        )
        recipe = derive(features.pos, features.neg, band, features.exclude, spec, features.names[:2], pack.source)
    steps.update()
    head_diff, heads = _heads(attention, features.names)
    steps.update()
    steps.close()

    findings, tuning = None, options.tuning()
    if tuning is not None:  # phases 6-8: answer-behaviour directions, tuned, judged on held-out items
        steered = _steer(loaded, pack, recipe, features, tuning)
        recipe, findings = steered.recipe, steered.findings
        band, reason = recipe.layers, _tuned_reason(findings, tuning.kl_budget)
        timings.update({f"behaviour_{k}": v for k, v in steered.timings.items()})
    with progress.timed(timings, "logit_lens"):
        surgery = recipe.surgery(recipe.spec.default_alpha)
        lens_after = lens_over_probes(loaded.bridge, loaded.hf_model, arch, loaded.tokenizer, pack, surgery)
    with progress.timed(timings, "sweep"):  # phase 5
        alphas = options.sweep_at()
        sweep = (
            run_sweep(loaded.bridge, loaded.tokenizer, loaded.model, pack, recipe, alphas, options.batch_size)
            if alphas
            else {}
        )
    results = {
        **_phases(model, pack, options, features, (sep, reason), (head_diff, heads)),
        "logit_lens": _lens(pack, recipe, lens_before, lens_after, band[0]),
        "recipe": recipe.to_dict(),
        "sweep": sweep,
        "timings": timings,
        "disclaimer": pack.disclaimer,
    }
    _write(out_dir, pack, recipe, results, findings, features, (head_diff, band))
    return Analysis(recipe, results, findings, out_dir)


def _lens(pack: Pack, recipe: Recipe, before: dict, after: dict, first: int) -> dict:
    return {
        "probes": pack.manifest.probes,
        "alpha": recipe.spec.default_alpha,
        "before": before,
        "after": after,
        "unchanged_before_first_steered_layer": unchanged_before(before, after, first),
    }


def _refused_early(model: ResolvedModel, options: AnalysisOptions, placement: Placement) -> Pack:
    """The pack, once every input that would fail later is refused before any work."""
    out_dir = options.out
    if out_dir.exists() and any(out_dir.iterdir()) and not options.overwrite:
        raise FinsurgError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it")
    pack = Pack.load(options.behaviour)
    if options.tune and options.route == "conditional":
        model.arch.grafting(model.name)
        pack.off_topic_splits()
    placement.require("analyze", model.config)
    return pack


def _steer(loaded: _Loaded, pack: Pack, recipe: Recipe, features: _Features, tuning) -> Steered:
    """Phases 6-8 on a fresh model (booting the bridge rewrote the last one's modules), then the bridge again."""
    loaded.load()
    ctx = AnalysisContext(
        loaded.hf_model, loaded.tokenizer, loaded.model.arch, pack, tuning.batch_size, tuning.tune_pairs
    )
    steered = steer_by_answers(
        ctx, recipe, seed_direction(features.pos.mean, features.neg.mean, features.exclude), tuning
    )
    loaded.boot()
    return steered


def _phases(model, pack: Pack, options: AnalysisOptions, features: _Features, band, heads) -> dict:
    """The results of phases 1-3 and the band, as mech_interp_results.json records them; `band` is the separation
    per layer and the reason for the band, `heads` the head differences and the top heads."""
    (sep, reason), (head_diff, top) = band, heads
    return {
        "format": "finsurg.mech_interp/1",
        "finsurg_version": __version__,
        "model": model.name,
        "pack": pack.source,
        "pack_sources": pack.sources,
        "categories": dict(zip(("positive", "negative", "neutral"), features.names)),
        "train_prompts": {c.name: len(c.train) for c in pack.categories},
        "pool": options.pool,
        "pool_description": POOLS[options.pool],
        "massive_dims": {str(d): r for d, r in features.massive.items()},
        "separation_per_layer": [round(float(v), 5) for v in sep],
        "band_reason": reason,
        "features": features.table,
        "heads": {"differential": head_diff.tolist(), "top": top},
    }


def _activations(loaded: _Loaded, arch, pack: Pack, options: AnalysisOptions) -> tuple[dict, dict]:
    """Phases 1 and 3: pooled activations and attention to the keywords, one batched pass per category."""
    tokenizer = loaded.tokenizer
    keywords = keyword_ids(tokenizer, pack.manifest.keywords)
    acts, attention = {}, {}
    with progress.bar(total=sum(len(c.train) for c in pack.categories), desc="phase 1: activations") as bar:
        for category in pack.categories:
            sequences = [prompt_ids(tokenizer, text) for text in category.train]
            batches = padded(tokenizer, sequences, options.batch_size)
            acts[category.name], attention[category.name] = collect(
                loaded.bridge, arch, batches, options.pool, keywords, bar.update
            )
    return acts, attention


def _features(acts: dict, pack: Pack, top_k: int) -> _Features:
    pos, neg, neu = (acts[c.name] for c in pack.categories)
    names = tuple(c.name for c in pack.categories)
    massive = massive_dims([pos, neg, neu])
    return _Features(pos, neg, neu, names, massive, rank_layers(pos, neg, neu, names, top_k, set(massive)))


def _band(features: _Features, lens_before: dict, layers: list[int] | None, depth: int):
    """The steered layers: where separation and logit-lens commitment peak, unless --layers pins them."""
    sep = separation(features.pos, features.neg, features.exclude)
    if layers is not None:
        return layers, "chosen with --layers", sep
    commitment = torch.tensor([sum(values[layer] for values in lens_before.values()) for layer in range(depth)])
    score = sep / sep.max() + commitment / commitment.max().clamp_min(1e-12)
    return (
        choose_band(score, band_width(depth)),
        "where the normalised difference plus logit-lens commitment peaks",
        sep,
    )


def _heads(attention: dict, names: tuple[str, ...]) -> tuple[torch.Tensor, list[dict]]:
    """Phase 3's summary: the heads whose attention to the keywords differs most, positive against neutral."""
    head_diff = (attention[names[0]].mean - attention[names[2]].mean).float()
    order = head_diff.flatten().abs().argsort(descending=True)[:TOP_HEADS]
    width = head_diff.shape[1]
    heads = [
        {"layer": int(i) // width, "head": int(i) % width, "difference": float(head_diff.flatten()[i])} for i in order
    ]
    return head_diff, heads


def _tuned_reason(findings: Findings, budget: float) -> str:
    chosen = findings.tuning.chosen
    return (
        f"tuned: trial {chosen.trial} ({chosen.method}), the largest two-sided shift on the tune "
        f"split within KL {budget:g}"
    )


def _write(
    out_dir: Path, pack: Pack, recipe: Recipe, results: dict, findings: Findings | None, features, heads
) -> None:
    """The run directory, complete or not at all: recipe, results, report, plots, and the splits the pack's pairs
    were given here; `features` is _Features, `heads` the head differences and the steered band."""
    names = features.names
    head_diff, band = heads
    with building(out_dir) as partial:
        recipe.save(partial)
        plot_dir = partial / "plots"
        plot_dir.mkdir()
        effect = effect_size(features.pos, features.neg).float()
        effect[:, list(features.exclude)] = 0.0
        dims = effect[band].abs().mean(0).argsort(descending=True)[:40].tolist()
        lens = results["logit_lens"]
        made = [
            plots.dimension_heatmap(
                effect, dims, band, f"{names[0]} − {names[1]}: top dimensions", plot_dir / "dimension_heatmap.png"
            ),
            plots.head_heatmap(
                head_diff, f"attention to keywords, {names[0]} − {names[2]}", plot_dir / "head_heatmap.png"
            ),
            plots.lens_curves(lens["before"], lens["after"], band, lens["alpha"], plot_dir / "logit_lens.png"),
        ]
        if results["sweep"]:
            made.append(plots.sweep_plot(results["sweep"]["rows"], names[0], plot_dir / "alpha_sweep.png"))
        if findings is not None:
            made.append(plots.pareto_plot(findings.tuning, recipe.spec.default_alpha, plot_dir / "pareto.png"))
            made.append(plots.item_plot(findings.heldout, plot_dir / "heldout_items.png"))
        results["plots"] = [p.name for p in made]
        behaviour = None if findings is None else findings.model_dump(mode="json")
        (partial / ANALYSIS_NAME).write_text(json.dumps(results | {"behaviour": behaviour}, indent=2) + "\n")
        (partial / REPORT_NAME).write_text(report.render(results, findings))
        if pack.answers_split_here:  # auditable: what was trained, tuned and judged on
            write_json(partial / SPLITS_NAME, pack.answer_pairs().model_dump(mode="json"))
