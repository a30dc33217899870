"""The `finsurg` command: analyze, surgery, export and verify."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from finsurg import DISCLAIMER, __version__
from finsurg.errors import FinsurgError

DESCRIPTION = """\
finsurg finds residual-stream directions that toggle a behaviour in a Llama-family model,
applies them as inference-time hooks ("neuron surgery"), and bakes the same surgery into
ordinary checkpoints (mlp.down_proj biases) that plain transformers and vLLM load.
"""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same single line on stderr and exit status 2 as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="smollm2-135m (default, embedded), a local HF directory, a .gguf file, or a Hub id",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="accept .bin pickle checkpoints")


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default=None, help="recipe.json, its directory, or a built-in preset name")
    parser.add_argument("--alpha", type=float, default=None, help="steering strength (default: the recipe's)")


def _eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", default="", help="extra lm-eval task names, comma-separated (the finsurg tasks always run)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N items of each task")
    parser.add_argument("--eval-batch-size", type=int, default=16, help="lm-eval batch size (default 16)")
    parser.add_argument("--chat-template", default="auto", choices=["auto", "on", "off"],
                        help="render task prompts with the model's chat template (auto: when it has one)")


def _push_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--private", action="store_true", help="create private repos")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded where, upload nothing")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="finsurg", description=DESCRIPTION, epilog=DISCLAIMER)
    parser.add_argument("--version", action="version", version=f"finsurg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = commands.add_parser("analyze", help="find the steering dimensions with TransformerLens; write a recipe")
    _model_args(analyze)
    analyze.add_argument("--out", type=Path, default=Path("finsurg-analysis"), help="run directory (default finsurg-analysis)")
    analyze.add_argument("--prompts", type=Path, default=None, help="a prompt-set directory (default: finance advice vs caution)")
    analyze.add_argument("--pool", default="last", choices=["last", "mean"], help="token positions pooled (default last)")
    analyze.add_argument("--layers", default=None, help="steered layers, e.g. 20-25 (default: where separation peaks)")
    analyze.add_argument("--batch-size", type=int, default=16, help="prompts per forward pass (default 16)")
    analyze.add_argument("--top-k", type=int, default=10, help="dimensions ranked per layer (default 10)")
    analyze.add_argument("--no-sweep", action="store_true", help="skip the alpha sweep")
    analyze.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    _common(analyze)

    surgery = commands.add_parser("surgery", help="apply a recipe as hooks; before/after generations and logit lens")
    _model_args(surgery)
    _recipe_args(surgery)
    surgery.add_argument("--prompt", action="append", help="a prompt to generate from (repeatable)")
    surgery.add_argument("--tokens", type=int, default=40, help="new tokens per generation (default 40)")
    surgery.add_argument("--out", type=Path, default=Path("finsurg-surgery"), help="where results JSON goes")
    _common(surgery)

    export = commands.add_parser("export", help="bake steered and conservative variants into safetensors")
    _model_args(export)
    _recipe_args(export)
    export.add_argument("--out", type=Path, default=Path("finsurg-export"), help="parent of steered/ and conservative/")
    export.add_argument("--dtype", default="keep", choices=["keep", "float32", "bfloat16", "float16"],
                        help="weight dtype of the variants (default: keep the base's)")
    export.add_argument("--overwrite", action="store_true", help="replace existing variant directories")
    export.add_argument("--link", default="auto", choices=["auto", "copy"],
                        help="unchanged shards: auto reflinks them where the filesystem allows (copy-on-write, "
                             "so the base can never change through them) and copies elsewhere; copy always copies")
    export.add_argument("--no-verify", action="store_true", help="skip the hooks-vs-baked verification")
    export.add_argument("--eval", action="store_true", help="after verification, run finsurg eval on the variants")
    _eval_args(export)
    export.add_argument("--push-to-hub", action="store_true", help="upload both variants to the Hugging Face Hub")
    export.add_argument("--hub-namespace", default=None,
                        help="user or organisation for the repos (default: the logged-in user)")
    _push_args(export)
    _common(export)

    push = commands.add_parser("push", help="upload a variant directory (with its model card) to the Hub")
    push.add_argument("variant", type=Path, help="a variant directory written by finsurg export")
    push.add_argument("--repo-id", required=True, help="namespace/name of the model repo (created if missing)")
    _push_args(push)
    _common(push)

    evaluate = commands.add_parser(
        "eval", help="lm-eval on the base, the baked variants and their hook versions; checks item-by-item parity"
    )
    evaluate.add_argument("variants", type=Path, nargs="+", help="variant directories, or an export directory")
    evaluate.add_argument("--model", type=Path, default=None, help="base model directory (default: the recorded one)")
    evaluate.add_argument("--out", type=Path, default=None,
                          help="where eval.json and eval.md go (default: the export directory)")
    _eval_args(evaluate)
    _common(evaluate)

    verify = commands.add_parser("verify", help="check a variant against the hook version and its checksums")
    verify.add_argument("variant", type=Path, help="a variant directory written by finsurg export")
    verify.add_argument("--model", type=Path, default=None, help="base model directory (default: the recorded one)")
    verify.add_argument("--checksums", action="store_true", help="only check SHA256SUMS")
    verify.add_argument("--tokens", type=int, default=32, help="greedy tokens compared per prompt (default 32)")
    verify.add_argument("--engine", default="transformers", choices=["transformers", "vllm"],
                        help="transformers: logits, KL, greedy and prefix checks against the hooks; "
                             "vllm: greedy tokens served by vLLM against transformers and the hooks")
    verify.add_argument("--vllm-python", default=None,
                        help="the Python that has vLLM (default: $FINSURG_VLLM_PYTHON, else this one)")
    _common(verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except FinsurgError as exc:
        print(f"finsurg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("finsurg: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # read when tqdm is imported: silences library bars too
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    progress = not args.quiet
    if args.command == "verify":
        return _verify(args, progress)
    if args.command == "eval":
        return _eval(args, progress)
    if args.command == "push":
        return _push(args)

    from finsurg.model_source import resolve_model
    from finsurg.recipe import resolve_recipe

    model = resolve_model(args.model, allow_pickle=args.allow_pickle)
    if args.command == "analyze":
        return _analyze(args, model, progress)
    recipe = resolve_recipe(args.recipe, model.name, model.config)
    alpha = recipe.spec.default_alpha if args.alpha is None else args.alpha
    if args.command == "surgery":
        return _surgery(args, model, recipe, alpha, progress)
    return _export(args, model, recipe, alpha, progress)


def _analyze(args, model, progress) -> int:
    from finsurg.analysis.analyze import analyze, parse_layers
    from finsurg.analysis.sweep import ALPHAS

    results = analyze(
        model, args.out, args.prompts, args.pool, parse_layers(args.layers, model.num_layers), args.batch_size,
        args.top_k, [] if args.no_sweep else ALPHAS, args.overwrite, progress,
    )
    if args.json:
        print(json.dumps({k: v for k, v in results.items() if k not in ("features", "heads")} | {"out": str(args.out)}, indent=2))
        return 0
    recipe = results["recipe"]
    print(f"Analysed {model.name}: steered layers {recipe['layers']}, massive dims {list(results['massive_dims']) or 'none'}")
    for neuron in recipe["neurons"]:
        print(f"  dim {neuron['index']:>5}  {neuron['coefficient']:+.4g}  {neuron['role']}")
    for row in results["sweep"].get("rows", []) if results["sweep"] else []:
        print(f"  alpha {row['alpha']:+4g}: preference {row['preference']:.3f}, log-odds {row['log_odds']:+.3f}, "
              f"perplexity {row['perplexity']:.3f} ({row['perplexity_change']:+.1%})")
    print(f"Wrote {args.out}/recipe.json, mech_interp_results.json, report.md and plots/")
    print(DISCLAIMER)
    return 0


def _surgery(args, model, recipe, alpha, progress) -> int:
    from finsurg.analysis.surgery import format_results, run_surgery, write_results
    from finsurg.recipe import check_alpha

    results = run_surgery(model, recipe, check_alpha(alpha), args.prompt, args.tokens, progress)
    path = write_results(results, args.out)
    print(json.dumps(results, indent=2) if args.json else format_results(results) + f"\n\nWrote {path}")
    return 0


def _export(args, model, recipe, alpha, progress) -> int:
    from finsurg.exporter.export import export_variants

    _needs(args, "eval", ("tasks", "limit", "eval_batch_size", "chat_template"))
    _needs(args, "push_to_hub", ("hub_namespace", "private", "dry_run"))
    options = _eval_options(args) if args.eval else None
    namespace = _hub_namespace(args) if args.push_to_hub else None
    results = export_variants(
        model, recipe, alpha, args.out, args.dtype, args.overwrite, verify=not args.no_verify, progress=progress,
        link=args.link,
    )
    evaluation = None
    if options is not None:
        from finsurg.exporter.evaluation import evaluate

        evaluation = evaluate([Path(item["path"]) for item in results], out_dir=args.out, base_trusted=True,
                              progress=progress, **options)
    uploads = []
    if namespace is not None and (evaluation is None or evaluation["passed"]):
        from finsurg.hub_cards.push import default_repo_id, push

        for item in results:
            path = Path(item["path"])
            uploads.append(push(path, default_repo_id(path, namespace), args.private, args.dry_run))
    if args.json:
        print(json.dumps({"model": model.name, "recipe": recipe.origin, "variants": results,
                          "eval": evaluation, "uploads": uploads}, indent=2))
        return 0 if evaluation is None else _parity_status(evaluation)
    print(f"Exported {model.name} with {recipe.origin or 'recipe'} at alpha ±{abs(alpha):g}:")
    for item in results:
        modes = sorted(set(item["shards"].values()))
        how = f", unchanged shards by {'/'.join(modes)}" if modes else ""
        print(f"  {item['variant']:<13} alpha {item['alpha']:+g}  {item['path']}  "
              f"({item['bytes'] / 1e6:.0f} MB, {item['dtype']}{how})")
        if "verification" in item:
            print("    " + format_verification(item["verification"]).replace("\n", "\n    "))
    if evaluation is not None:
        print(_eval_summary(evaluation, args.out))
    for upload in uploads:
        print(_upload_summary(upload))
    print(DISCLAIMER)
    return 0 if evaluation is None else _parity_status(evaluation)


def _needs(args, switch: str, options: tuple[str, ...]) -> None:
    """Options that only mean something with `switch` are refused without it, not silently ignored."""
    defaults = vars(build_parser().parse_args([args.command]))
    given = [name for name in options if getattr(args, name) != defaults[name]]
    if given and not getattr(args, switch):
        flag = "--" + given[0].replace("_", "-")
        raise FinsurgError(f"{flag} needs --{switch.replace('_', '-')}")


def _hub_namespace(args) -> str:
    """--hub-namespace, else the logged-in user (asked before any work, so a missing login fails fast)."""
    from finsurg.hub_cards.push import REPO_ID

    namespace = args.hub_namespace
    if not namespace:
        from huggingface_hub import HfApi

        try:
            namespace = HfApi().whoami()["name"]
        except Exception:  # no token, or no reachable Hub: both mean the same to the user
            raise FinsurgError("--push-to-hub needs --hub-namespace, or a Hugging Face login (hf auth login)") from None
    if not REPO_ID.match(f"{namespace}/x"):
        raise FinsurgError(f"invalid --hub-namespace {namespace!r}")
    return namespace


def _push(args) -> int:
    from finsurg.hub_cards.push import push

    upload = push(args.variant, args.repo_id, args.private, args.dry_run)
    print(json.dumps(upload, indent=2) if args.json else _upload_summary(upload))
    return 0


def _upload_summary(upload: dict) -> str:
    size = sum(item["bytes"] for item in upload["files"])
    verb = "would upload" if upload["dry_run"] else "uploaded"
    lines = [f"{upload['directory']}: {verb} {len(upload['files'])} files ({size / 1e6:.1f} MB) to {upload['url']}"
             + (" (private)" if upload["private"] else "")]
    if upload["dry_run"]:
        lines += [f"  {item['path']}  {item['bytes']} bytes" for item in upload["files"]]
    return "\n".join(lines)


def _eval_options(args) -> dict:
    if args.limit is not None and args.limit < 1:
        raise FinsurgError("--limit must be at least 1")
    if args.eval_batch_size < 1:
        raise FinsurgError("--eval-batch-size must be at least 1")
    return {
        "extra_tasks": [t.strip() for t in args.tasks.split(",") if t.strip()],
        "limit": args.limit,
        "batch_size": args.eval_batch_size,
        "chat": {"auto": None, "on": True, "off": False}[args.chat_template],
    }


def _eval(args, progress) -> int:
    from finsurg.exporter.bake import SURGERY_NAME
    from finsurg.exporter.evaluation import evaluate

    out = args.out
    if out is None and len(args.variants) == 1 and not (args.variants[0] / SURGERY_NAME).exists():
        out = args.variants[0]
    report = evaluate(args.variants, base_override=args.model, out_dir=out, progress=progress, **_eval_options(args))
    print(json.dumps(report, indent=2) if args.json else _eval_summary(report, out) + "\n" + DISCLAIMER)
    return _parity_status(report)


def _parity_status(report: dict) -> int:
    """1 with a line on stderr when a variant's baked and hooked runs disagree."""
    failed = [name for name, item in report["variants"].items() if not item["parity"]["passed"]]
    for name in failed:
        parity = report["variants"][name]["parity"]
        print(f"finsurg: error: {name}: baked and hooked lm-eval log-likelihoods disagree "
              f"(max |Δ| {parity['worst']:.3g} > {parity['atol']:g}); the variant does not serve the surgery",
              file=sys.stderr)
    return 1 if failed else 0


def _eval_summary(report: dict, out: Path | None) -> str:
    from finsurg.exporter.evaluation import render_table

    where = f"\nWrote {out}/eval.json and eval.md" if out is not None else ""
    return "lm-eval results (float32 compute):\n" + render_table(report) + where


def _verify(args, progress) -> int:
    from finsurg.exporter.verify import verify_variant
    from finsurg.hashing import check_sums

    if args.checksums:
        if not args.variant.is_dir():
            raise FinsurgError(f"variant directory not found: {args.variant}")
        sums = check_sums(args.variant)
        print(json.dumps({"checksums_ok": True, "files": len(sums)}) if args.json else f"{len(sums)} files match SHA256SUMS")
        return 0
    if args.tokens < 1:
        raise FinsurgError("--tokens must be at least 1")
    if args.engine == "vllm":
        from finsurg.exporter.vllm_check import verify_with_vllm

        report = verify_with_vllm(args.variant, args.model, new_tokens=args.tokens, python=args.vllm_python)
        print(json.dumps(report, indent=2) if args.json else format_vllm(report))
        return 0 if report["passed"] else 1
    report = verify_variant(args.variant, args.model, new_tokens=args.tokens, progress=progress)
    print(json.dumps(report, indent=2) if args.json else format_verification(report))
    return 0 if report["passed"] else 1


def format_vllm(report: dict) -> str:
    parts = []
    for name in ("vs_transformers", "vs_hooks"):
        item = report[name]
        parts.append(f"{name.replace('_', ' ')}: {item['prompts_identical']}/{report['prompts']} prompts identical, "
                     f"{item['tokens_matching']}/{item['tokens_total']} tokens")
    return (f"vLLM {report['vllm_version']} ({'PASSED' if report['passed'] else 'FAILED'}), float32 greedy, "
            f"{report['new_tokens']} tokens: " + "; ".join(parts) + f"; engine loaded in {report['vllm_load_seconds']} s")


def format_verification(report: dict) -> str:
    exact = report["float32"]
    effect = exact["steering_effect"]
    lines = [
        f"verification ({'PASSED' if report['passed'] else 'FAILED'}), float32, {report['prompts']} prompts: "
        f"max|Δlogit| {exact['max_abs_logit_diff']:.2e}, KL mean {exact['kl_mean']:.2e} max {exact['kl_max']:.2e}, "
        f"argmax {exact['argmax_agreement']:.1%}, greedy {exact['greedy_prompts_identical']}/{report['prompts']} "
        f"identical ({report['new_tokens']} tokens), layers < {exact['prefix_layers_checked']} bit-identical: "
        f"{exact['prefix_layers_bit_identical']}, steering live (cos {effect['delta_cosine']:.4f}, "
        f"KL base→hooked {effect['kl_base_vs_hooked_mean']:.3f})"
    ]
    low = report.get("export_dtype")
    if low:
        floor = low["noise_floor"]
        lines.append(
            f"{low['dtype']}: KL mean {low['kl_mean']:.2e} max {low['kl_max']:.2e}, argmax {low['argmax_agreement']:.1%}; "
            f"noise floor (fp32 vs {low['dtype']} base) KL mean {floor['kl_mean']:.2e}, argmax {floor['argmax_agreement']:.1%}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
