"""`finsurg export`: bake the steered (+alpha) and conservative (-alpha) variants, then verify them."""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

from finsurg.atomic import building
from finsurg.bake.shard_copy import LINK_MODES
from finsurg.bake.writer import VariantWriter
from finsurg.checks.verify import verify_variant
from finsurg.dtypes import weight_dtype
from finsurg.errors import FinsurgError
from finsurg.model_source import ResolvedModel
from finsurg.steer.recipe import Recipe, check_alpha
from finsurg.variant.card import verification_rows
from finsurg.variant.record import VARIANT_SIGNS, VerificationReport
from finsurg.variant.seal import write_report


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
    link: str = "auto",
) -> list[dict]:
    """Bake and verify both variants in hidden directories; publish them together, or neither."""
    alpha = check_alpha(alpha)
    if alpha == 0:
        raise FinsurgError("alpha must be non-zero: at 0 both variants equal the base model")
    target = None if dtype == "keep" else weight_dtype(dtype)
    if link not in LINK_MODES:
        raise FinsurgError(f"unknown --link {link!r} (choose from {', '.join(LINK_MODES)})")
    recipe.check_model(model.config, model.name)
    if out_dir.resolve() == model.path.resolve() or model.path.resolve() in out_dir.resolve().parents:
        raise FinsurgError("the output directory is inside the model directory; choose another --out")
    writer = VariantWriter(model, target, link)  # a truncated or corrupt shard is refused before anything is written
    created = _first_missing(out_dir)
    targets = plan_targets(out_dir, overwrite)
    try:
        return _bake_all(writer, model, recipe, alpha, targets, verify)
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


def _bake_all(writer: VariantWriter, model, recipe, alpha, targets, verify) -> list[dict]:
    results = []
    with ExitStack() as stack:
        for variant, final in targets.items():
            partial = stack.enter_context(building(final))
            baked = writer.write(recipe, VARIANT_SIGNS[variant] * abs(alpha), variant, partial)
            summary = {
                "variant": variant,
                "alpha": baked.alpha,
                "path": str(final),
                "dtype": baked.dtype,
                "bytes": baked.bytes_written,
                "shards": baked.copied,
            }
            if verify:
                report = verify_variant(partial, model.path, base_trusted=True)
                write_report(partial, report, known=baked.sums)
                summary["verification"] = report.model_dump(mode="json")
                if not report.passed:
                    raise FinsurgError(f"{variant} failed verification: {headline(report)}")
            results.append(summary)
    return results


def headline(report: VerificationReport) -> str:
    return "; ".join(f"{name}: {value}" for name, value in verification_rows(report))
