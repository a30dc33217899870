"""A variant's own files beside its checkpoint: the exact offsets, the surgery record, the analysis plots and
the seal (model card and SHA256SUMS)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from finsurg import __version__
from finsurg.dtypes import name_of
from finsurg.errors import FinsurgError
from finsurg.jsonfile import validation_message, write_json
from finsurg.packs import Pack, joined_disclaimers
from finsurg.steer.arch import Architecture
from finsurg.steer.bundle import Bundle
from finsurg.steer.findings import Findings
from finsurg.steer.recipe import ANALYSIS_NAME, Recipe
from finsurg.steer.surgery import Surgery
from finsurg.variant.record import (
    OFFSETS_NAME,
    PLOTS_DIR,
    SURGERY_NAME,
    BaseModelInfo,
    BundledBehaviour,
    SurgeryRecord,
)
from finsurg.variant.seal import seal


def surgery_record(
    bundle: Bundle,
    alphas: dict[str, float],
    variant: str,
    dtype: torch.dtype,
    arch: Architecture,
    base: BaseModelInfo,
    context_cap: int | None,
) -> SurgeryRecord:
    """The record of one variant: the bundle's behaviours at `alphas` (the first also at the top level)."""
    behaviours = [_bundled(member.recipe, member.name, alphas[member.name]) for member in bundle.members]
    first = behaviours[0]
    return SurgeryRecord(
        finsurg_version=__version__,
        variant=variant,
        dtype=name_of(dtype),
        baked_into=arch.site.bias.replace("{layer}", "{L}"),
        site=arch.site.name,
        rewritten_as=arch.variant_architecture if arch.rewrite else None,
        context_cap=context_cap,
        base_model=base,
        **first.model_dump(include={"alpha", "recipe", "recipe_origin", "steering_vectors_sha256", "card"}),
        behaviour=first.behaviour,
        disclaimer=joined_disclaimers(b.disclaimer for b in behaviours),
        bundle=behaviours if len(behaviours) > 1 else [],
    )


def _bundled(recipe: Recipe, name: str, alpha: float) -> BundledBehaviour:
    pack = Pack.load(recipe.spec.pack)
    return BundledBehaviour(
        name=name,
        alpha=alpha,
        recipe=recipe.spec,
        recipe_origin=recipe.origin,
        steering_vectors_sha256=_vector_digest(recipe) if recipe.has_steering else None,
        card=pack.manifest.card,
        behaviour=_behaviour(recipe),
        disclaimer=pack.disclaimer,
    )


def assemble(
    out: Path, bundle: Bundle, surgery: Surgery, record: SurgeryRecord, known: dict[str, str]
) -> dict[str, str]:
    """Write the records into `out`, a variant's checkpoint, and seal it; `surgery` is what was baked (rounded to
    the variant's dtype), `known` holds the checkpoint's hashes."""
    save_file(surgery.tensors(), out / OFFSETS_NAME, metadata=surgery.metadata())
    write_json(out / SURGERY_NAME, record.model_dump(mode="json"))
    _copy_plots(bundle, out)
    for path in out.iterdir():
        if path.is_file():
            path.chmod(0o644)  # safetensors writes 0600; variants are meant to be shared and served
    return seal(out, known=known)


def _behaviour(recipe: Recipe) -> Findings | None:
    """The held-out effects and examples of the analysis beside the recipe, for the model card."""
    path = recipe.source_dir / ANALYSIS_NAME if recipe.source_dir else None
    if path is None or not path.is_file():
        return None
    behaviour = json.loads(path.read_text()).get("behaviour")
    if not behaviour:
        return None
    try:
        return Findings.model_validate(behaviour).summary()
    except ValidationError as exc:
        raise FinsurgError(f"{path}: {validation_message(exc, path.name)}") from None


def _vector_digest(recipe: Recipe) -> str:
    digest = hashlib.sha256()
    for layer in recipe.layers:
        digest.update(recipe.vectors[layer].float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _copy_plots(bundle: Bundle, out: Path) -> None:
    """The analysis plots beside each recipe, for the model card; a bundle's under each behaviour's name."""
    for member in bundle.members:
        source = member.recipe.source_dir
        if source is None or not (source / PLOTS_DIR).is_dir():
            continue
        plots = sorted((source / PLOTS_DIR).glob("*.png"))
        target = out / PLOTS_DIR / (member.name if len(bundle.members) > 1 else "")
        if plots:
            target.mkdir(parents=True)
            for path in plots:
                shutil.copyfile(path, target / path.name)
