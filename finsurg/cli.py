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

from finsurg import __version__
from finsurg.errors import FinsurgError
from finsurg.settings import COMMANDS, GROUPS, CommandSettings, cli_name

EPILOG = (
    "A behaviour pack states its disclaimer; finsurg prints it with every output about a model and writes it "
    "on every card."
)
DESCRIPTION = """\
finsurg finds residual-stream directions that toggle a behaviour in a model (Llama, Qwen2/2.5,
Qwen3, Mistral, Granite), applies them as inference-time hooks ("neuron surgery"), and bakes the
same surgery into ordinary checkpoints (biases) that plain transformers and vLLM load, and into
GGUF for llama.cpp and Ollama. `finsurg monitor` turns the directions into a compliance monitor:
a stock classification checkpoint that scores chat logs and watches them drift.

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
        if is_list and extra.get("comma"):
            kwargs["type"] = lambda text: [part.strip() for part in text.split(",") if part.strip()]
        elif is_list:
            kwargs["action"] = "append"
        elif annotation is not bool:
            choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
            if choices:
                kwargs["choices"] = choices
            if field.default is not None and not field.is_required():
                help_text += f" (default {field.default})"
        parser.add_argument(cli_name(model, name), help=help_text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="finsurg", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"finsurg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for settings in COMMANDS:
        head, _, tail = settings.command.partition(" ")
        if tail and head not in groups:  # `finsurg monitor export`: a command of a group
            holder = commands.add_parser(head, help=GROUPS[head], description=GROUPS[head])
            groups[head] = holder.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
        where = groups[head] if tail else commands
        sub = where.add_parser(tail or head, help=settings.summary, description=settings.summary)
        _add_fields(sub, settings)
        sub.add_argument(
            "--config", type=Path, default=None, help=f"a TOML file whose [{settings.command}] table sets options"
        )
        sub.add_argument("--json", dest="json_output", action="store_true", help="print machine-readable JSON")
    return parser


def command_of(args: argparse.Namespace) -> str:
    return f"{args.command} {args.subcommand}" if getattr(args, "subcommand", None) else args.command


def settings_from(args: argparse.Namespace) -> CommandSettings:
    """The command's settings: the given flags, nested into their groups, over env, config and defaults."""
    settings = next(s for s in COMMANDS if s.command == command_of(args))
    given: dict = {}
    for key, value in vars(args).items():
        if key in ("command", "subcommand", "config", "json_output"):
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
    # before torch loads: MKL's and ATen's AVX2 code paths, which every x86-64 machine of this kind runs, so an
    # analysis computes the same bytes with and without AVX-512 (their kernels round differently)
    os.environ.setdefault("MKL_CBWR", "AVX2")
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
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
        return _run_command(settings, command_of(args), args.json_output)
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


def _run_command(settings: CommandSettings, command: str, as_json: bool) -> int:
    from finsurg import api

    outcome = api.RUN[command](settings)
    print(json.dumps(outcome.payload(), indent=2) if as_json else outcome.text())
    for problem in outcome.problems():
        print(f"finsurg: error: {problem}", file=sys.stderr)
    return outcome.status()


if __name__ == "__main__":
    sys.exit(main())
