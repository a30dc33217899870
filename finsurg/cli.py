"""The `finsurg` command: a thin layer over the API, its flags generated from the settings models."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from finsurg import DISCLAIMER, __version__
from finsurg.errors import FinsurgError
from finsurg.settings import COMMANDS, CommandSettings, cli_name

DESCRIPTION = """\
finsurg finds residual-stream directions that toggle a behaviour in a model (Llama, Qwen2/2.5,
Qwen3, Mistral, Granite), applies them as inference-time hooks ("neuron surgery"), and bakes the
same surgery into ordinary checkpoints (biases) that plain transformers and vLLM load, and into
GGUF for llama.cpp and Ollama.

Every option can also come from FINSURG_<OPTION> (FINSURG_EVAL__LIMIT for grouped ones) or
from the command's table in a TOML file (--config run.toml, e.g. [export] alpha = 2).
"""


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same single line on stderr and exit status 2 as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _group_model(annotation) -> type[BaseModel] | None:
    for arg in typing.get_args(annotation) or (annotation,):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _add_fields(parser: argparse.ArgumentParser, model: type[BaseModel], prefix: str = "") -> None:
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra or {}
        dest, annotation = prefix + name, field.annotation
        help_text = field.description or ""
        group = _group_model(annotation)
        if group is not None and not extra.get("positional"):
            parser.add_argument(
                cli_name(model, name), dest=dest, action="store_true", default=argparse.SUPPRESS, help=help_text
            )
            _add_fields(parser, group, prefix=f"{dest}.")
            continue
        is_list = typing.get_origin(annotation) is list
        if extra.get("positional"):
            parser.add_argument(dest, nargs="+" if is_list else None, help=help_text)
            continue
        kwargs: dict = {"dest": dest, "default": argparse.SUPPRESS}
        if annotation is bool:
            kwargs["action"] = "store_false" if field.default else "store_true"
            help_text = f"do not {help_text}" if field.default else help_text
        else:
            kwargs["metavar"] = name.upper()
        if annotation is bool:
            pass
        elif is_list and extra.get("comma"):
            kwargs["type"] = lambda text: [part.strip() for part in text.split(",") if part.strip()]
        elif is_list:
            kwargs["action"] = "append"
        else:
            choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
            if choices:
                kwargs["choices"] = choices
            if field.default is not None and not field.is_required():
                help_text += f" (default {field.default})"
        parser.add_argument(cli_name(model, name), help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="finsurg", description=DESCRIPTION, epilog=DISCLAIMER, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"finsurg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for settings in COMMANDS:
        sub = commands.add_parser(settings.command, help=settings.summary, description=settings.summary)
        _add_fields(sub, settings)
        sub.add_argument(
            "--config", type=Path, default=None, help=f"a TOML file whose [{settings.command}] table sets options"
        )
        sub.add_argument("--json", dest="json_output", action="store_true", help="print machine-readable JSON")
    return parser


def settings_from(args: argparse.Namespace) -> CommandSettings:
    """The command's settings: the given flags, nested into their groups, over env, config and defaults."""
    settings = next(s for s in COMMANDS if s.command == args.command)
    given: dict = {}
    for key, value in vars(args).items():
        if key in ("command", "config", "json_output"):
            continue
        head, _, tail = key.partition(".")
        if tail:
            given.setdefault(head, {})
            if not isinstance(given[head], dict):
                given[head] = {}
            given[head][tail] = value
        elif value is True and _group_model(settings.model_fields[key].annotation) is not None:
            given.setdefault(key, {})
        else:
            given[key] = value
    for name in list(given):
        field = settings.model_fields.get(name)
        group = _group_model(field.annotation) if field is not None else None
        if group is not None and name not in vars(args):
            option = next(iter(given[name]))
            raise FinsurgError(f"{cli_name(group, option)} needs {cli_name(settings, name)}")
    return settings.load(given, args.config)


class Stopped(BaseException):
    """SIGTERM or SIGINT: it unwinds like KeyboardInterrupt, so each partial directory is removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame) -> None:
    for stopping in STOP_SIGNALS:  # a second signal must not cut the clean-up short
        signal.signal(stopping, signal.SIG_IGN)
    raise Stopped(signum)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    previous = {stopping: signal.signal(stopping, _stop) for stopping in STOP_SIGNALS}
    try:
        return _run(args)
    finally:
        for stopping, handler in previous.items():
            signal.signal(stopping, handler)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return RUN[args.command](settings, args.json_output)
    except FinsurgError as exc:
        print(f"finsurg: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, I/O: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"finsurg: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Stopped as stop:
        print(f"finsurg: stopped by {signal.Signals(stop.signum).name}; partial output removed", file=sys.stderr)
        return 128 + stop.signum


def _print_json(payload) -> None:
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    print(json.dumps(payload, indent=2, default=lambda obj: obj.model_dump(mode="json")))


def _analyze(settings, as_json: bool) -> int:
    from finsurg import api

    results = api.analyze(settings)
    if as_json:
        _print_json({k: v for k, v in results.items() if k not in ("features", "heads")} | {"out": str(settings.out)})
        return 0
    recipe = results["recipe"]
    print(
        f"Analysed {results['model']}: steered layers {recipe['layers']}, "
        f"massive dims {list(results['massive_dims']) or 'none'}"
    )
    for neuron in recipe["neurons"]:
        print(f"  dim {neuron['index']:>5}  {neuron['coefficient']:+.4g}  {neuron['role']}")
    for row in results["sweep"].get("rows", []) if results["sweep"] else []:
        print(
            f"  alpha {row['alpha']:+4g}: preference {row['preference']:.3f}, log-odds {row['log_odds']:+.3f}, "
            f"perplexity {row['perplexity']:.3f} ({row['perplexity_change']:+.1%})"
        )
    if results.get("behaviour"):
        from finsurg.effect_tables import heldout_table

        behaviour = results["behaviour"]
        chosen = behaviour["tuning"]["chosen"]
        print(
            f"Tuned on the tune split: trial {chosen['trial']}, {chosen['method']}, layers "
            f"{chosen['layers'][0]}-{chosen['layers'][1]}, strength {chosen['strength']:g} = alpha 3 "
            f"(KL {chosen['kl']:.3f} within {behaviour['tuning']['budget']:g})"
        )
        print(f"Held-out effects ({behaviour['splits']['heldout']} questions):")
        print("\n".join("  " + line for line in heldout_table(behaviour["heldout"])))
        print("  " + behaviour["neuron_ablation"]["reason"])
    print(f"Wrote {settings.out}/recipe.json, mech_interp_results.json, report.md and plots/")
    print(DISCLAIMER)
    return 0


def _surgery(settings, as_json: bool) -> int:
    from finsurg import api
    from finsurg.analysis.surgery import format_results

    results, path = api.surgery(settings)
    print(json.dumps(results, indent=2) if as_json else format_results(results) + f"\n\nWrote {path}")
    return 0


def _export(settings, as_json: bool) -> int:
    from finsurg import api

    outcome = api.export(settings)
    evaluation = outcome["eval"]
    status = 0 if evaluation is None else _parity_status(evaluation)
    if as_json:
        _print_json(outcome)
        return status
    from finsurg.variant.card import verification_rows
    from finsurg.variant.record import VerificationReport

    print(f"Exported {outcome['model']} with {outcome['recipe'] or 'recipe'} at alpha ±{abs(outcome['alpha']):g}:")
    for item in outcome["variants"]:
        modes = sorted(set(item["shards"].values()))
        how = f", unchanged shards by {'/'.join(modes)}" if modes else ""
        print(
            f"  {item['variant']:<13} alpha {item['alpha']:+g}  {item['path']}  "
            f"({item['bytes'] / 1e6:.0f} MB, {item['dtype']}{how})"
        )
        if "verification" in item:
            report = VerificationReport.model_validate(item["verification"])
            print(f"    verification {'PASSED' if report.passed else 'FAILED'}, float32, {report.prompts} prompts:")
            for name, value in verification_rows(report):
                print(f"      {name}: {value}")
    for item in outcome["gguf"]:
        print(_gguf_line(item))
    if evaluation is not None:
        print(_eval_summary(evaluation, settings.out))
    for upload in outcome["uploads"]:
        print(_upload_summary(upload))
    print(DISCLAIMER)
    return status


def _push(settings, as_json: bool) -> int:
    from finsurg import api

    upload = api.push(settings)
    if as_json:
        _print_json(upload)
    else:
        print(_upload_summary(upload))
    return 0


def _upload_summary(upload: dict) -> str:
    size = sum(item["bytes"] for item in upload["files"])
    verb = "would upload" if upload["dry_run"] else "uploaded"
    lines = [
        f"{upload['directory']}: {verb} {len(upload['files'])} files ({size / 1e6:.1f} MB) to {upload['url']}"
        + (" (private)" if upload["private"] else "")
    ]
    if upload["dry_run"]:
        lines += [f"  {item['path']}  {item['bytes']} bytes" for item in upload["files"]]
    return "\n".join(lines)


def _eval(settings, as_json: bool) -> int:
    from finsurg import api

    report, out = api.evaluate(settings)
    if as_json:
        _print_json(report)
    else:
        print(_eval_summary(report, out) + "\n" + DISCLAIMER)
    return _parity_status(report)


def _parity_status(report) -> int:
    """1 with a line on stderr when a variant's baked and hooked runs disagree."""
    failed = [name for name, item in report.variants.items() if item.parity is not None and not item.parity.passed]
    for name in failed:
        parity = report.variants[name].parity
        print(
            f"finsurg: error: {name}: baked and hooked lm-eval log-likelihoods disagree "
            f"(max |Δ| {parity.worst:.3g} > {parity.atol:g}); the variant does not serve the surgery",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _eval_summary(report, out: Path | None) -> str:
    from finsurg.checks.evaluation import render_table

    where = f"\nWrote {out}/eval.json and eval.md" if out is not None else ""
    return "lm-eval results (float32 compute):\n" + render_table(report) + where


def _verify(settings, as_json: bool) -> int:
    from finsurg import api
    from finsurg.variant.card import verification_rows
    from finsurg.variant.record import LlamaCppReport, VllmReport

    report = api.verify(settings)
    if as_json:
        _print_json(report)
        return 0 if isinstance(report, dict) or report.passed else 1
    if isinstance(report, dict):
        print(f"{report['files']} files match SHA256SUMS")
        return 0
    verdict = "PASSED" if report.passed else "FAILED"
    if isinstance(report, LlamaCppReport):
        routes, tokens = report.baked_vs_control_vector, report.baked_vs_control_vector_tokens
        print(
            f"llama.cpp {report.llama_cpp_version} ({verdict}), F32, {report.prompts} prompts:\n"
            f"  baked GGUF vs base GGUF + control vector at {report.alpha:+g}: {tokens.prompts_identical}/"
            f"{report.prompts} greedy continuations identical ({report.new_tokens} tokens), max |Δlogit| "
            f"{routes.max_abs_logit_diff:.2e} (tolerance {report.tolerance:.1e})\n"
            f"  baked GGUF vs transformers on the variant: max |Δlogit| "
            f"{report.baked_vs_transformers.max_abs_logit_diff:.2e}, argmax "
            f"{report.baked_vs_transformers.argmax_agreement:.1%}, greedy "
            f"{report.baked_vs_transformers_tokens.prompts_identical}/{report.prompts}; noise floor (base GGUF vs "
            f"base in transformers): max |Δlogit| {report.noise_floor.max_abs_logit_diff:.2e}, argmax "
            f"{report.noise_floor.argmax_agreement:.1%}"
        )
    elif isinstance(report, VllmReport):
        parts = [
            f"{name.replace('_', ' ')}: {item.prompts_identical}/{report.prompts} prompts identical, "
            f"{item.tokens_matching}/{item.tokens_total} tokens"
            for name, item in (("vs_transformers", report.vs_transformers), ("vs_hooks", report.vs_hooks))
        ]
        print(
            f"vLLM {report.vllm_version} ({verdict}), float32 greedy, {report.new_tokens} tokens: "
            + "; ".join(parts)
            + f"; engine loaded in {report.vllm_load_seconds} s"
        )
    else:
        print(f"verification ({verdict}), float32, {report.prompts} prompts:")
        for name, value in verification_rows(report):
            print(f"  {name}: {value}")
    if settings.record:
        print(f"Recorded in {settings.variant} (card and SHA256SUMS re-sealed)")
    return 0 if report.passed else 1


def _gguf(settings, as_json: bool) -> int:
    from finsurg import api

    written = api.gguf(settings)
    if as_json:
        _print_json(written)
    else:
        print(_gguf_line(written))
    return 0


def _gguf_line(item: dict) -> str:
    if "variant" in item:
        return f"  {item['variant']} GGUF: {item['path']} ({item['bytes'] / 1e6:.0f} MB, sha256 {item['sha256'][:16]})"
    return (
        f"  control vector (alpha 1, layers {', '.join(map(str, item['layers']))}): {item['path']}; use "
        f"--control-vector-scaled {Path(item['path']).name}:ALPHA on the base GGUF"
    )


def _cvector(settings, as_json: bool) -> int:
    from finsurg import api

    written = api.cvector(settings)
    if as_json:
        _print_json(written)
    else:
        print(
            f"control vector of {written['recipe']} at alpha {written['alpha']:g}, layers "
            f"{', '.join(map(str, written['layers']))}: {written['path']}\n"
            f"llama.cpp: llama-cli -m BASE.gguf --control-vector-scaled {written['path']}:SCALE "
            f"(SCALE multiplies alpha {written['alpha']:g})"
        )
    return 0


RUN = {
    "analyze": _analyze,
    "surgery": _surgery,
    "export": _export,
    "push": _push,
    "eval": _eval,
    "verify": _verify,
    "gguf": _gguf,
    "cvector": _cvector,
}


if __name__ == "__main__":
    sys.exit(main())
