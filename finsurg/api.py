"""finsurg's Python API: one function per command, each taking that command's settings object and returning
its typed outcome (finsurg.outcomes).

from finsurg import api
from finsurg.settings import ExportSettings
api.export(ExportSettings(recipe="run/", alpha=3, out="variants")).variants
"""

from __future__ import annotations

from pathlib import Path

from finsurg import progress
from finsurg.errors import FinsurgError
from finsurg.monitor.monitor_options import MonitorOptions
from finsurg.outcomes import (
    AnalyzeOutcome,
    CvectorOutcome,
    DriftOutcome,
    EvalOutcome,
    ExportOutcome,
    GgufOutcome,
    MonitorOutcome,
    PackCheckOutcome,
    ScoreOutcome,
    SurgeryOutcome,
    UploadOutcome,
    VerifyOutcome,
)
from finsurg.packs import Pack, joined_disclaimers
from finsurg.settings import (
    AnalyzeSettings,
    CommandSettings,
    CvectorSettings,
    EvalSettings,
    ExportSettings,
    GgufSettings,
    MonitorDriftSettings,
    MonitorExportSettings,
    MonitorScoreSettings,
    PackCheckSettings,
    PackInitSettings,
    PushOptions,
    PushSettings,
    SurgerySettings,
    VerifySettings,
)


def _placement(settings):
    """Device, compute dtype and memory budget of a command: bad values are refused before any work."""
    from finsurg.devices import Placement

    return Placement.of(settings.device, getattr(settings, "compute_dtype", "float32"), settings.max_memory)


def _model(settings: CommandSettings):
    from finsurg.models.source import resolve_model

    progress.set_enabled(not settings.quiet)
    return resolve_model(settings.model, allow_pickle=settings.allow_pickle)


def _resolved(settings):
    from finsurg.steer.recipe import resolve_recipe

    model = _model(settings)
    recipe = resolve_recipe(settings.recipe, model.name, model.config)
    alpha = recipe.spec.default_alpha if settings.alpha is None else settings.alpha
    return model, recipe, alpha


def analyze(settings: AnalyzeSettings) -> AnalyzeOutcome:
    from finsurg.analysis.analyze import analyze as run

    placement = _placement(settings)
    return AnalyzeOutcome(run(_model(settings), settings, placement))


def surgery(settings: SurgerySettings) -> SurgeryOutcome:
    from finsurg.analysis.surgery import run_surgery, write_results

    placement = _placement(settings)
    model, recipe, alpha = _resolved(settings)
    results = run_surgery(model, recipe, alpha, settings.prompt or None, settings.tokens, placement)
    return SurgeryOutcome(results, write_results(results, settings.out))


def export(settings: ExportSettings) -> ExportOutcome:
    """Bake and verify both variants of the recipe (or the bundle of recipes); then lm-eval and upload if the
    settings ask for them."""
    from finsurg.export import export_variants
    from finsurg.steer.bundle import Bundle
    from finsurg.steer.recipe import resolve_recipe

    placement = _placement(settings)
    model = _model(settings)
    recipes = [resolve_recipe(spec, model.name, model.config) for spec in settings.recipe or [None]]
    packs = [Pack.load(r.spec.pack) for r in recipes]
    bundle = Bundle.of(recipes, settings.alpha)
    namespace = hub_namespace(settings.push) if settings.push is not None else None
    variants = export_variants(model, bundle, settings, placement)
    paths = [item.path for item in variants]
    origins = ", ".join(r.origin for r in recipes)
    disclaimer = joined_disclaimers(pack.disclaimer for pack in packs)
    outcome = ExportOutcome(model.name, origins, bundle.primary.alpha, variants, disclaimer)
    if len(bundle.members) > 1 and settings.crosstalk:
        outcome.crosstalk = _crosstalk(model, bundle, variants, placement)
    if settings.gguf is not None:
        outcome.gguf = _ggufs(settings, paths, bundle, model)
    if settings.eval is not None:
        from finsurg.checks.evaluation import evaluate as run_eval

        outcome.eval = EvalOutcome(
            run_eval(paths, settings.eval, settings.out, placement, base_trusted=True), settings.out
        )
    if settings.monitor:
        outcome.monitor = _monitor(
            model, bundle, settings.out / "monitor", settings.overwrite, placement, settings.monitor
        )
    if namespace is not None and (outcome.eval is None or outcome.eval.report.passed):
        from finsurg.hub.push import default_repo_id
        from finsurg.hub.push import push as upload

        options = settings.push
        outcome.uploads = [
            upload(path, default_repo_id(path, namespace), options.private, options.dry_run) for path in paths
        ]
    return outcome


def _crosstalk(model, bundle, variants, placement):
    """The bundle's cross-talk, measured once and stored in each variant (whose card then shows it)."""
    from finsurg.analysis.crosstalk import crosstalk
    from finsurg.dtypes import weight_dtype
    from finsurg.variant.seal import write_report

    report = crosstalk(model, bundle, bundle.variants(), weight_dtype(variants[0].dtype), placement)
    for item in variants:
        write_report(item.path, report)
    return report


def _ggufs(settings: ExportSettings, paths: list[Path], bundle, model) -> list[dict]:
    """Each variant's GGUF inside it, and a single recipe's control vector (alpha 1) beside them (a bundle's
    behaviours have their own signs, which one control vector cannot carry)."""
    from finsurg.bake.gguf_variant import CONTROL_VECTOR_NAME, control_vector, variant_gguf
    from finsurg.engines.converter import converter

    script = converter(settings.gguf.llamacpp_python)
    written = [variant_gguf(path, None, settings.gguf.gguf_type, script) for path in paths]
    if len(bundle.members) > 1:
        return written
    offsets = bundle.primary.recipe.offsets(1.0)
    return written + [control_vector(offsets, model.arch, settings.out / CONTROL_VECTOR_NAME)]


def gguf(settings: GgufSettings) -> GgufOutcome:
    from finsurg.bake.gguf_variant import variant_gguf
    from finsurg.engines.converter import converter

    progress.set_enabled(not settings.quiet)
    script = converter(settings.llamacpp_python)
    return GgufOutcome(variant_gguf(settings.variant, settings.out, settings.gguf_type, script))


def cvector(settings: CvectorSettings) -> CvectorOutcome:
    from finsurg.bake.gguf_variant import control_vector
    from finsurg.steer.recipe import resolve_recipe

    model = _model(settings)
    recipe = resolve_recipe(settings.recipe, model.name, model.config)
    if not settings.out.parent.is_dir():
        raise FinsurgError(f"output directory not found: {settings.out.parent}")
    written = control_vector(recipe.offsets(settings.alpha), model.arch, settings.out)
    return CvectorOutcome(written | {"alpha": settings.alpha, "recipe": recipe.origin})


def _monitor(model, bundle, out: Path, overwrite: bool, placement, options: MonitorOptions):
    from finsurg.monitor.build import build_monitor

    return MonitorOutcome(build_monitor(model, bundle, out, overwrite, placement, options), out)


def monitor_export(settings: MonitorExportSettings) -> MonitorOutcome:
    from finsurg.steer.bundle import Bundle
    from finsurg.steer.recipe import resolve_recipe

    placement = _placement(settings)
    model = _model(settings)
    bundle = Bundle.single(resolve_recipe(settings.recipe, model.name, model.config))
    return _monitor(model, bundle, settings.out, settings.overwrite, placement, settings)  # settings: MonitorOptions


def monitor_score(settings: MonitorScoreSettings) -> ScoreOutcome:
    from finsurg.models.source import read_config
    from finsurg.monitor.classifier import load_spec
    from finsurg.monitor.score import check_base, score_log

    placement = _placement(settings)
    progress.set_enabled(not settings.quiet)
    spec = load_spec(settings.monitor)
    if settings.engine == "transformers":
        placement.require("scoring with the monitor", read_config(settings.monitor))
    if settings.model is not None:
        model = _model(settings)
        check_base(spec, settings.monitor, model.path, model.name)
    out = settings.out or settings.log.with_name(settings.log.name.removesuffix(".jsonl") + ".scores.jsonl")
    return ScoreOutcome(
        score_log(
            settings.monitor,
            settings.log,
            out,
            settings.engine,
            settings,  # its ScoreOptions
            placement.device,
            settings.vllm_python,
        )
    )


def monitor_drift(settings: MonitorDriftSettings) -> DriftOutcome:
    from finsurg.monitor.drift import Span, drift, write_report

    window = Span.parse(settings.window, "--window")
    reference = Span.parse(settings.reference, "--reference") if settings.reference else None
    report = drift(settings.scored, window, reference, settings.alarm_p)
    return DriftOutcome(report, write_report(report, settings.out, settings.overwrite))


def pack_check(settings: PackCheckSettings) -> PackCheckOutcome:
    from finsurg.packs.survey import check_pack

    return PackCheckOutcome(check_pack(settings.pack))


def pack_init(settings: PackInitSettings) -> PackCheckOutcome:
    """The pack is written whole or not at all, then checked as `pack check` would."""
    from finsurg.io.atomic import building, refuse_existing
    from finsurg.packs.survey import check_pack, init_pack

    if not settings.pairs.is_file():
        raise FinsurgError(f"pairs file not found: {settings.pairs}")
    refuse_existing(settings.directory, settings.overwrite)
    with building(settings.directory) as partial:
        init_pack(settings.directory.name, settings.pairs, partial)
    return PackCheckOutcome(check_pack(settings.directory), written=settings.directory)


def hub_namespace(options: PushOptions) -> str:
    """--hub-namespace, else the logged-in user (asked before any work, so a missing login fails fast)."""
    from finsurg.hub.push import check_repo_id

    namespace = options.hub_namespace
    if not namespace:
        from huggingface_hub import HfApi

        try:
            namespace = HfApi().whoami()["name"]
        except Exception:  # no token, or no reachable Hub: both mean the same to the user
            raise FinsurgError("--push-to-hub needs --hub-namespace, or a Hugging Face login (hf auth login)") from None
    try:
        check_repo_id(f"{namespace}/x")
    except FinsurgError:
        raise FinsurgError(f"invalid --hub-namespace {namespace!r}") from None
    return namespace


def push(settings: PushSettings) -> UploadOutcome:
    from finsurg.hub.push import push as upload

    progress.set_enabled(not settings.quiet)
    return UploadOutcome(upload(settings.variant, settings.repo_id, settings.private, settings.dry_run))


def evaluate(settings: EvalSettings) -> EvalOutcome:
    from finsurg.variant.record import SURGERY_NAME

    progress.set_enabled(not settings.quiet)
    out = settings.out
    if out is None and len(settings.variants) == 1 and not (settings.variants[0] / SURGERY_NAME).exists():
        out = settings.variants[0]
    from finsurg.checks.evaluation import evaluate as run_eval

    report = run_eval(settings.variants, settings, out, _placement(settings), base_override=settings.model)
    return EvalOutcome(report, out)


def verify(settings: VerifySettings) -> VerifyOutcome:
    """The checksum, transformers, vLLM or llama.cpp report; recorded in the variant only with `record`."""
    from finsurg.io.hashing import check_sums
    from finsurg.variant.reports import ChecksumReport
    from finsurg.variant.seal import write_report

    progress.set_enabled(not settings.quiet)
    placement = _placement(settings)
    if settings.checksums:
        if not settings.variant.is_dir():
            raise FinsurgError(f"variant directory not found: {settings.variant}")
        return VerifyOutcome(ChecksumReport(variant=str(settings.variant), files=len(check_sums(settings.variant))))
    if settings.engine == "llama.cpp":
        from finsurg.checks.llamacpp_check import verify_with_llamacpp

        report = verify_with_llamacpp(
            settings.variant, settings.model, new_tokens=settings.tokens, python=settings.llamacpp_python
        )
    elif settings.engine == "vllm":
        from finsurg.checks.vllm_check import verify_with_vllm

        report = verify_with_vllm(
            settings.variant, settings.model, new_tokens=settings.tokens, python=settings.vllm_python
        )
    else:
        from finsurg.checks.verify import Scope, verify_variant

        scope = Scope(settings.tokens, settings.full, placement.max_memory, placement.device)
        report = verify_variant(settings.variant, settings.model, scope)
    if settings.record:
        write_report(settings.variant, report)
    return VerifyOutcome(report, settings.variant if settings.record else None)


RUN = {
    "analyze": analyze,
    "surgery": surgery,
    "export": export,
    "push": push,
    "eval": evaluate,
    "verify": verify,
    "gguf": gguf,
    "cvector": cvector,
    "monitor export": monitor_export,
    "monitor score": monitor_score,
    "monitor drift": monitor_drift,
    "pack check": pack_check,
    "pack init": pack_init,
}
