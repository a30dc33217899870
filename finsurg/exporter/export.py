"""`finsurg export`: bake the steered (+alpha) and conservative (-alpha) variants, then verify them."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

from finsurg.atomic import building
from finsurg.errors import FinsurgError
from finsurg.exporter.bake import DTYPE_CHOICES, VARIANT_SIGNS, bake_variant
from finsurg.exporter.checkpoint import Checkpoint
from finsurg.exporter.shard_copy import LINK_MODES, SourceHashes
from finsurg.exporter.verify import verify_variant
from finsurg.model_source import ResolvedModel
from finsurg.recipe import Recipe, check_alpha


def plan_targets(out_dir: Path, overwrite: bool) -> dict[str, Path]:
    """The final directory of each variant; refused up front if one exists and overwrite is off."""
    targets = {variant: out_dir / variant for variant in VARIANT_SIGNS}
    for path in targets.values():
        if path.exists() and not overwrite:
            raise FinsurgError(f"{path} already exists; pass --overwrite to replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FinsurgError(f"cannot create output directory {out_dir}: {exc.strerror}") from None
    probe = out_dir / ".finsurg-write-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FinsurgError(f"output directory {out_dir} is not writable: {exc.strerror}") from None
    return targets


def export_variants(
    model: ResolvedModel,
    recipe: Recipe,
    alpha: float,
    out_dir: Path,
    dtype: str = "keep",
    overwrite: bool = False,
    verify: bool = True,
    progress: bool = True,
    link: str = "auto",
) -> list[dict]:
    """Bake and verify both variants in hidden directories; publish them together, or neither."""
    alpha = check_alpha(alpha)
    if alpha == 0:
        raise FinsurgError("alpha must be non-zero: at 0 both variants equal the base model")
    if dtype not in DTYPE_CHOICES:
        raise FinsurgError(f"unknown --dtype {dtype!r} (choose from {', '.join(DTYPE_CHOICES)})")
    if link not in LINK_MODES:
        raise FinsurgError(f"unknown --link {link!r} (choose from {', '.join(LINK_MODES)})")
    recipe.check_model(model.config, model.name)
    if out_dir.resolve() == model.path.resolve() or model.path.resolve() in out_dir.resolve().parents:
        raise FinsurgError("the output directory is inside the model directory; choose another --out")
    Checkpoint.open(model.path)  # a truncated or corrupt shard is refused before anything is written
    created = _first_missing(out_dir)
    targets = plan_targets(out_dir, overwrite)
    try:
        return _bake_all(model, recipe, alpha, targets, dtype, verify, progress, link)
    except BaseException:
        if created is not None:  # leave no trace of a failed export
            shutil.rmtree(created, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of `path` that does not exist yet (what an export would create)."""
    missing = None
    for candidate in [path.absolute(), *path.absolute().parents]:
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def _bake_all(model, recipe, alpha, targets, dtype, verify, progress, link) -> list[dict]:
    source_hashes = SourceHashes()
    results = []
    with ExitStack() as stack:
        for variant, final in targets.items():
            partial = stack.enter_context(building(final))
            baked = bake_variant(model, recipe, VARIANT_SIGNS[variant] * abs(alpha), variant, partial, dtype,
                                 source_hashes, progress, link)
            summary = {"variant": variant, "alpha": baked.alpha, "path": str(final), "dtype": baked.dtype,
                       "bytes": baked.bytes_written, "shards": baked.copied}
            if verify:
                report = verify_variant(partial, model.path, base_trusted=True, progress=progress)
                summary["verification"] = report
                if not report["passed"]:
                    raise FinsurgError(f"{variant} failed verification: {_headline(report)}")
            results.append(summary)
    return results


def _headline(report: dict) -> str:
    exact = report["float32"]
    return (
        f"KL max {exact['kl_max']:.2e} (limit {report['kl_limit']:.0e}), "
        f"greedy {exact['greedy_prompts_identical']}/{report['prompts']} identical, "
        f"prefix layers bit-identical: {exact['prefix_layers_bit_identical']}, "
        f"steering live: {exact['steering_effect']['live']}"
    )
