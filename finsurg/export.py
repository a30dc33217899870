"""`finsurg export`: bake the steered (+alpha) and conservative (-alpha) variants of one recipe, or of a bundle of
recipes, then verify them."""

from __future__ import annotations

import math
import queue
import shutil
import threading
from contextlib import ExitStack
from pathlib import Path

from pydantic import BaseModel

from finsurg.bake.bake import largest_alpha
from finsurg.bake.writer import VariantWriter
from finsurg.checks.local_proof import Baking, BlockProof, Proven, check_structure
from finsurg.checks.verify import Scope, verify_variants
from finsurg.devices import GIB, Placement
from finsurg.dtypes import name_of, weight_dtype
from finsurg.errors import FinsurgError
from finsurg.io.atomic import building, refuse_existing
from finsurg.io.shard_copy import reflinks
from finsurg.models.loading import encode, load_tokenizer
from finsurg.models.source import ResolvedModel
from finsurg.packs import Pack
from finsurg.settings import ExportOptions
from finsurg.steer.bundle import Bundle, Member
from finsurg.steer.surgery import Surgery
from finsurg.variant.assemble import assemble, surgery_record
from finsurg.variant.directory import Variant
from finsurg.variant.reports import VerificationReport
from finsurg.variant.seal import write_report


class ExportedVariant(BaseModel):
    """One variant as written (and verified): what export returns, and what --json prints of it."""

    variant: str
    alpha: float  # the first behaviour's
    alphas: dict[str, float] = {}  # a bundle's: each behaviour's
    path: Path
    dtype: str
    bytes: int
    shards: dict[str, str]  # unchanged shard -> how it was written (reflink or copy)
    verification: VerificationReport | None = None

    def payload(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def plan_targets(out_dir: Path, names: list[str], overwrite: bool) -> dict[str, Path]:
    """The final directory of each variant; refused up front if one exists and overwrite is off."""
    targets = {variant: out_dir / variant for variant in names}
    for path in targets.values():
        refuse_existing(path, overwrite)
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
    bundle: Bundle,
    options: ExportOptions,
    placement: Placement | None = None,
) -> list[ExportedVariant]:
    """Bake and verify the bundle's pair of variants in hidden directories; publish them together, or neither."""
    out_dir = options.out
    target = None if options.dtype == "keep" else weight_dtype(options.dtype)
    for member in bundle.members:
        member.recipe.check_model(model.config, model.name)
    if out_dir.resolve() == model.path.resolve() or model.path.resolve() in out_dir.resolve().parents:
        raise FinsurgError("the output directory is inside the model directory; choose another --out")
    writer = VariantWriter(model, target, options.link, options.cap_context)  # a corrupt shard is refused here
    for member in bundle.members:
        _check_finite(member, writer, named=len(bundle.members) > 1)
    variants = bundle.variants()
    created = _first_missing(out_dir)
    targets = plan_targets(out_dir, list(variants), options.overwrite)
    try:
        _check_disk(writer, out_dir, options.link)
        # what each variant bakes, records and is proved against: one surgery, rounded to the variant's dtype
        surgeries = {name: bundle.surgery(alphas).rounded(writer.dtype) for name, alphas in variants.items()}
        pack = bundle.primary.recipe.spec.pack
        check = _Verifier(model, pack, surgeries, writer, options, placement) if options.verify else None
        try:
            return _bake_all(writer, bundle, variants, surgeries, targets, check)
        finally:
            if check is not None:
                check.close()
    except BaseException as exc:
        if created is not None:  # leave no trace of a failed export
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            raise FinsurgError(f"writing the variants failed: {exc.strerror or exc}{where}") from None
        raise


class _Verifier:
    """Verification of both variants, as much of it as can run beside the writing on a thread of its own: the
    proof's block checks need only the base and the offsets, so they start at once; each sealed variant's
    structure check follows, while the next variant is written. The end-to-end checks wait for both. The
    writing builds no torch module, so the thread may build its models (accelerate's empty-weights context
    patches torch for the whole process while it does); `close` joins it before the export returns."""

    def __init__(self, model: ResolvedModel, pack: str, surgeries: dict[str, Surgery], writer, options, placement):
        self.model, self.options = model, options
        self.placement = placement or Placement.of("cpu")
        dtype = name_of(writer.dtype)
        bakings = [Baking(surgery, dtype, writer.context_cap) for surgery in surgeries.values()]
        self._cancelled = threading.Event()
        self._sealed: queue.Queue = queue.Queue()  # (directory, sums) of each sealed variant; None after the last
        self._result: list = []
        args = (model.path, writer.arch, bakings, pack)
        self._thread = threading.Thread(target=self._run, args=args)
        self._thread.start()

    def _run(self, base: Path, arch, surgeries: list[Baking], pack: str) -> None:
        try:
            prompt = encode(load_tokenizer(base), Pack.load(pack).verification_prompts()[0])
            proven = Proven(surgeries, BlockProof(base, arch, surgeries, prompt, self._cancelled).run())
            while (sealed := self._sealed.get()) is not None and not self._cancelled.is_set():
                directory, sums = sealed
                proven.structures[directory] = (sums, check_structure(Variant(directory), base, arch, sums))
            self._result.append(proven)
        except BaseException as exc:  # re-raised where the result is read
            self._result.append(exc)

    def sealed(self, directory: Path, sums: dict[str, str]) -> None:
        """A variant is written and sealed: its structure can be checked while the next one is written."""
        self._sealed.put((directory, sums))

    def close(self) -> None:
        """Stop the checks after the one in hand (an export that failed or was stopped)."""
        self._cancelled.set()
        self._sealed.put(None)
        self._thread.join()

    def __call__(self, paths: list[Path], sums: list[dict[str, str]]) -> list[VerificationReport]:
        self._sealed.put(None)
        self._thread.join()
        proven = self._result[0]
        if isinstance(proven, BaseException):
            raise proven
        scope = Scope(full=self.options.full_verify, max_memory=self.placement.max_memory, device=self.placement.device)
        return verify_variants(paths, self.model.path, scope, base_trusted=True, sums=sums, proven=proven)


def _check_finite(member: Member, writer: VariantWriter, named: bool) -> None:
    """Refuse an alpha whose offsets overflow the variant's dtype, before anything is written (naming the
    behaviour in a bundle)."""
    alpha = member.alpha
    largest = largest_alpha(member.recipe.surgery(1.0), writer.arch, writer.model.config, writer.dtype)
    if abs(alpha) > largest:
        digits = 10 ** (math.floor(math.log10(largest)) - 3)
        raise FinsurgError(
            f"alpha {alpha:g}{f' ({member.name})' if named else ''} makes offsets that overflow {name_of(writer.dtype)}; "
            f"the largest alpha that fits is {math.floor(largest / digits) * digits:.4g}"
        )


def _check_disk(writer: VariantWriter, out_dir: Path, link: str) -> None:
    """Refuse up front when the output filesystem cannot hold both variants."""
    linked = link == "auto" and reflinks(writer.checkpoint.shards[0].path, out_dir)
    need = 2 * writer.bytes_to_write(linked)
    free = shutil.disk_usage(out_dir).free
    if need > free:
        raise FinsurgError(
            f"the export writes about {need / GIB:.1f} GiB but {out_dir} has {free / GIB:.1f} GiB free; "
            "free some space or choose another --out"
        )


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of `path` that does not exist yet (what an export would create)."""
    missing = None
    for candidate in [path.absolute(), *path.absolute().parents]:
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def _bake_all(
    writer: VariantWriter,
    bundle: Bundle,
    variants: dict[str, dict[str, float]],
    surgeries: dict[str, Surgery],
    targets,
    check,
) -> list[ExportedVariant]:
    """Write both variants (`variants`: each one's alphas), then verify them together (each base block is read once
    for both)."""
    results, partials, sums = [], [], []
    with ExitStack() as stack:
        for variant, final in targets.items():
            partial = stack.enter_context(building(final))
            alphas, surgery = variants[variant], surgeries[variant]
            written = writer.write(surgery, variant, partial)
            record = surgery_record(
                bundle, alphas, variant, writer.dtype, writer.arch, writer.base_info(), writer.context_cap
            )
            sealed = assemble(partial, bundle, surgery, record, written.sums)
            partials.append(partial)
            sums.append(sealed)
            if check is not None:
                check.sealed(partial, sealed)
            results.append(
                ExportedVariant(
                    variant=variant,
                    alpha=record.alpha,
                    alphas=alphas if len(alphas) > 1 else {},
                    path=final,
                    dtype=record.dtype,
                    bytes=sum((partial / name).stat().st_size for name in sealed),
                    shards=written.copied,
                )
            )
        if check is not None:
            for exported, partial, known, report in zip(results, partials, sums, check(partials, sums)):
                write_report(partial, report, known=known)
                exported.verification = report
                if not report.passed:
                    raise FinsurgError(f"{exported.variant} failed verification: {headline(report)}")
    return results


def headline(report: VerificationReport) -> str:
    return "; ".join(f"{name}: {value}" for name, value in report.rows())
