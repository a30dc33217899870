"""One typed settings object per command, shared by the CLI, the environment, a TOML file and the API.

Precedence: command-line flags, then `FINSURG_<FIELD>` environment variables (nested groups with
`__`, e.g. `FINSURG_EVAL__LIMIT`), then the command's table in `--config run.toml` (`[export]`,
`[analyze]`, ...), then the defaults. An optional group (`eval`, `push`) is switched on by its
flag; its options mean nothing without it, so the CLI refuses them alone.
"""

from __future__ import annotations

import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, PositiveInt, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, TomlConfigSettingsSource

from finsurg.analysis.options import AnalysisOptions
from finsurg.checks.eval_options import EvalOptions
from finsurg.errors import FinsurgError
from finsurg.jsonfile import validation_message
from finsurg.monitor.monitor_options import MonitorOptions, ScoreOptions
from finsurg.options import Alpha, Device, Group, flag

_config_file: ContextVar[Path | None] = ContextVar("finsurg_config_file", default=None)


class CommandSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FINSURG_", env_nested_delimiter="__", extra="forbid")
    command: ClassVar[str]
    summary: ClassVar[str]

    quiet: bool = Field(False, **flag("no progress bars"))

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        config = _config_file.get()
        sources = [init_settings, env_settings]
        if config is not None:
            sources.append(
                TomlConfigSettingsSource(settings_cls, toml_file=config, toml_table_header=tuple(cls.command.split()))
            )
        return tuple(sources)

    @classmethod
    def load(cls, given: dict | None = None, config: Path | None = None):
        """Settings from `given` (the flags), the environment and the config file; errors are one line."""
        if config is not None:
            if not config.is_file():
                raise FinsurgError(f"config file not found: {config}")
            try:
                tomllib.loads(config.read_text())
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise FinsurgError(f"{config} is not valid TOML ({exc})") from None
        token = _config_file.set(config)
        try:
            return cls(**(given or {}))
        except ValidationError as exc:
            raise FinsurgError(validation_message(exc, label=lambda loc: flag_of(cls, loc))) from None
        finally:
            _config_file.reset(token)


def cli_name(model: type[BaseModel], field: str) -> str:
    extra = model.model_fields[field].json_schema_extra or {}
    return extra.get("flag") or "--" + field.replace("_", "-")


def flag_of(settings: type[BaseModel], loc: tuple) -> str:
    """The CLI flag of a field path, e.g. ("eval", "limit") -> --limit."""
    model, name = settings, "settings"
    for part in loc:
        if not isinstance(part, str) or part not in model.model_fields:
            break
        name = cli_name(model, part)
        annotation = model.model_fields[part].annotation
        nested = [
            a
            for a in getattr(annotation, "__args__", (annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        model = nested[0] if nested else model
    return name


# ---- shared pieces --------------------------------------------------------------------------------
class Compute(CommandSettings):
    """Where a command that runs a model computes, and how much memory it may take."""

    device: Device = Field("auto", **flag("auto (CUDA when present), cpu, cuda or cuda:N"))
    max_memory: str | None = Field(
        None,
        **flag(
            "memory budget: a size (20GiB) for the device, or per device (0=70GiB,1=70GiB,cpu=100GiB) to dispatch "
            "a model over several GPUs (default: what is free)"
        ),
    )

    @field_validator("max_memory")
    @classmethod
    def _max_memory(cls, value: str | None) -> str | None:
        from finsurg.devices import parse_max_memory

        try:
            parse_max_memory(value)
        except FinsurgError as exc:
            raise ValueError(str(exc).removeprefix("cannot parse --max-memory ")) from None
        return value


class ComputeDtype(Compute):
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", **flag("dtype the model computes in (auto: bfloat16 on a GPU, float32 on the CPU)")
    )


class ModelChoice(CommandSettings):
    model: str | None = Field(
        None, **flag("smollm2-135m (default, embedded), a local HF directory, a .gguf file, or a Hub id")
    )
    allow_pickle: bool = Field(False, **flag("accept .bin pickle checkpoints"))


class RecipeChoice(ModelChoice):
    recipe: str | None = Field(
        None, **flag("recipe.json, its directory, or a built-in preset name (default: the preset that fits the model)")
    )
    alpha: Alpha | None = Field(None, **flag("steering strength (default: the recipe's)"))


class GgufOptions(Group):
    gguf_type: Literal["keep", "f32", "f16", "q8_0"] = Field(
        "keep",
        **flag("GGUF tensor type: keep copies the base GGUF's (quantized) blocks byte for byte", flag="--type"),
    )
    llamacpp_python: str | None = Field(
        None, **flag("the Python of the llama.cpp environment (default: $FINSURG_LLAMACPP_PYTHON, then this one)")
    )


class UploadOptions(Group):
    private: bool = Field(False, **flag("create private repos"))
    dry_run: bool = Field(False, **flag("list what would be uploaded where, upload nothing"))


class PushOptions(UploadOptions):
    hub_namespace: str | None = Field(None, **flag("user or organisation for the repos (default: the logged-in user)"))


# ---- the commands -------------------------------------------------------------------------------
class AnalyzeSettings(ModelChoice, ComputeDtype, AnalysisOptions):
    command = "analyze"
    summary = "find the steering directions with TransformerLens; write a recipe"


class SurgerySettings(RecipeChoice, ComputeDtype):
    command = "surgery"
    summary = "apply a recipe as hooks; before/after generations and logit lens"

    prompt: list[str] = Field([], **flag("a prompt to generate from (repeatable; default: the pack's)"))
    tokens: PositiveInt = Field(40, **flag("new tokens per generation"))
    out: Path = Field(Path("finsurg-surgery"), **flag("where the results JSON goes"))


class ExportOptions(Group):
    """Where the variants go and how they are written and checked."""

    out: Path = Field(Path("finsurg-export"), **flag("parent of steered/ and conservative/"))
    dtype: Literal["keep", "float32", "bfloat16", "float16"] = Field(
        "keep", **flag("weight dtype of the variants (keep: the base's)")
    )
    overwrite: bool = Field(False, **flag("replace existing variant directories"))
    link: Literal["auto", "copy"] = Field(
        "auto",
        **flag(
            "unchanged shards: auto reflinks them where the filesystem allows (copy-on-write, so the "
            "base can never change through them) and copies elsewhere; copy always copies"
        ),
    )
    cap_context: bool = Field(
        False,
        **flag(
            "for a base whose sliding window is shorter than its context (Mistral): write the Llama rewrite with "
            "max_position_embeddings set to the window, where it is exact"
        ),
    )
    verify: bool = Field(True, **flag("verify each variant against the hooks", flag="--no-verify"))
    crosstalk: bool = Field(
        True,
        **flag(
            "measure a bundle's cross-talk: each behaviour on its held-out split in the bundle against its recipe "
            "alone, and off-topic answers against the base (crosstalk.json in each variant)",
            flag="--no-crosstalk",
        ),
    )
    full_verify: bool = Field(
        False, **flag("also run the end-to-end check when the model does not fit in memory (layer-streamed)")
    )


class ExportSettings(RecipeChoice, Compute, ExportOptions):
    command = "export"
    summary = "bake steered and conservative variants into safetensors (of one recipe, or a bundle of several)"

    recipe: Annotated[list[str], NoDecode] = Field(
        [],
        **flag(
            "recipe.json, its directory, or a built-in preset name (default: the preset that fits the model); "
            "repeat it to bake several behaviours, each with its own gate, into one bundle"
        ),
    )
    alpha: Annotated[Alpha | dict[str, Alpha] | None, NoDecode] = Field(
        None,
        **flag(
            "steering strength of the first variant, its mirror the second (default: each recipe's); for a bundle, "
            "one value for all or NAME=VALUE per behaviour, comma-separated (finance=-3,medical=-3)"
        ),
    )

    @field_validator("recipe", mode="before")
    @classmethod
    def _recipes(cls, value):
        """One recipe given as a string (an environment variable, a config file's `recipe = "run/"`) is a list."""
        return [value] if isinstance(value, str) else value

    @field_validator("alpha", mode="before")
    @classmethod
    def _alphas(cls, value):
        """`NAME=VALUE,...` into a mapping; a plain number stays one."""
        if not isinstance(value, str) or "=" not in value:
            return value
        alphas = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            name, sep, number = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"expected NAME=VALUE, got {part!r}")
            alphas[name.strip()] = number.strip()
        return alphas

    gguf: GgufOptions | None = Field(
        None,
        **flag("also write each variant as GGUF (llama.cpp, Ollama), and the recipe's control-vector GGUF beside them"),
    )
    eval: EvalOptions | None = Field(None, **flag("after verification, run finsurg eval on the variants"))
    monitor: MonitorOptions | None = Field(
        None, **flag("also write the compliance monitor (finsurg monitor export) in OUT/monitor")
    )
    push: PushOptions | None = Field(None, **flag("upload both variants to the Hugging Face Hub", flag="--push-to-hub"))


class PushSettings(CommandSettings, UploadOptions):
    command = "push"
    summary = "upload a variant directory (with its model card) to the Hub"

    variant: Path = Field(**flag("a variant directory written by finsurg export", positional=True))
    repo_id: str = Field(**flag("namespace/name of the model repo (created if missing)"))


class EvalSettings(ComputeDtype, EvalOptions):
    command = "eval"
    summary = "lm-eval on the base, the baked variants and their hook versions; checks item-by-item parity"

    variants: list[Path] = Field(**flag("variant directories, or an export directory", positional=True))
    model: Path | None = Field(None, **flag("base model directory (default: the recorded one)"))
    out: Path | None = Field(None, **flag("where eval.json and eval.md go (default: the export directory)"))


class VerifySettings(Compute):
    command = "verify"
    summary = "check a variant against the hook version and its checksums (read-only unless --record)"

    variant: Path = Field(**flag("a variant directory written by finsurg export", positional=True))
    model: Path | None = Field(None, **flag("base model directory (default: the recorded one)"))
    checksums: bool = Field(False, **flag("only check SHA256SUMS"))
    full: bool = Field(
        False,
        **flag(
            "run the end-to-end check even when the model does not fit in memory (then layer-streamed, with "
            "teacher-forced argmax in place of greedy generation)"
        ),
    )
    tokens: PositiveInt = Field(32, **flag("greedy tokens compared per prompt"))
    engine: Literal["transformers", "vllm", "llama.cpp"] = Field(
        "transformers",
        **flag(
            "transformers: the layer-local proof and the check against the hooks; vllm: greedy tokens served by "
            "vLLM against transformers and the hooks; llama.cpp: the baked GGUF against the base GGUF with the "
            "control vector, in llama.cpp, and both against transformers"
        ),
    )
    vllm_python: str | None = Field(None, **flag("the Python that has vLLM (default: this one)"))
    llamacpp_python: str | None = Field(
        None, **flag("the Python that has llama-cpp-python (default: $FINSURG_LLAMACPP_PYTHON, then this one)")
    )
    record: bool = Field(False, **flag("write the report into the variant and re-seal its card and SHA256SUMS"))


class GgufSettings(CommandSettings, GgufOptions):
    command = "gguf"
    summary = "write a variant as GGUF for llama.cpp and Ollama: the base GGUF plus the offsets as ffn_down biases"

    variant: Path = Field(**flag("a variant directory written by finsurg export", positional=True))
    out: Path | None = Field(
        None, **flag("the GGUF file (default: inside the variant, recorded in its card and SHA256SUMS)")
    )


class CvectorSettings(ModelChoice):
    command = "cvector"
    summary = "write a recipe as llama.cpp's control-vector GGUF (--control-vector-scaled FILE:ALPHA)"

    recipe: str | None = Field(
        None, **flag("recipe.json, its directory, or a built-in preset name (default: the preset that fits the model)")
    )
    alpha: Alpha = Field(
        1.0, **flag("strength written into the file; llama.cpp's scale multiplies it (at 1 the scale is alpha)")
    )
    out: Path = Field(Path("finsurg-control-vector.gguf"), **flag("the control-vector GGUF file"))

    @field_validator("alpha")
    @classmethod
    def _non_zero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("alpha must be non-zero: a control vector at 0 does nothing")
        return value


class MonitorExportSettings(ModelChoice, Compute, MonitorOptions):
    command = "monitor export"
    summary = (
        "learn the monitor's topic and behaviour probes and write them as a stock sequence-classification "
        "checkpoint (the base cut after the probe layer)"
    )

    recipe: str | None = Field(
        None, **flag("recipe.json, its directory, or a built-in preset name (default: the preset that fits the model)")
    )
    out: Path = Field(Path("finsurg-monitor"), **flag("the monitor directory"))
    overwrite: bool = Field(False, **flag("replace an existing monitor directory"))


class MonitorScoreSettings(Compute, ScoreOptions):
    command = "monitor score"
    summary = 'score a chat log ({"messages": [...]} per line) with a monitor: one score line per input line'

    log: Path = Field(**flag("the chat log, JSONL in the OpenAI message format", positional=True))
    monitor: Path = Field(**flag("the monitor directory (finsurg monitor export)"))
    out: Path | None = Field(None, **flag("the scores, JSONL (default: LOG with .scores.jsonl)"))
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", **flag("transformers in this process, or vLLM's pooling runner in its own")
    )
    vllm_python: str | None = Field(
        None, **flag("the Python that has vLLM (default: $FINSURG_VLLM_PYTHON, then this one)")
    )
    model: str | None = Field(
        None, **flag("the base the logged traffic came from: refused if the monitor was built from another")
    )
    allow_pickle: bool = Field(False, **flag("accept .bin pickle checkpoints for --model"))


class MonitorDriftSettings(CommandSettings):
    command = "monitor drift"
    summary = "compare windows of a scored log with a reference window: shares flagged, mean scores, alarms"

    scored: Path = Field(**flag("a scored log written by finsurg monitor score", positional=True))
    window: str = Field("500", **flag("window size: a count of lines (500) or a span of time (30m, 6h, 1d)"))
    reference: str | None = Field(None, **flag("the reference: the first N lines or span (default: the first window)"))
    alarm_p: float = Field(
        0.01, gt=0, lt=1, **flag("family-wise false-alarm rate, Bonferroni-divided over windows and labels")
    )
    out: Path = Field(Path("finsurg-drift"), **flag("where drift.md, drift.png and drift.json go"))
    overwrite: bool = Field(False, **flag("replace an existing report directory"))


class PackCheckSettings(CommandSettings):
    command = "pack check"
    summary = "a pack's counts per split, one line per problem, where each part comes from, what optional parts enable"

    pack: str = Field(**flag("a pack directory, a file of pairs (.jsonl, .json) or a built-in name", positional=True))


class PackInitSettings(CommandSettings):
    command = "pack init"
    summary = "write a full pack directory from one file of pairs: splits, a manifest naming its defaults, examples"

    directory: Path = Field(**flag("the pack directory to write", positional=True))
    pairs: Path = Field(
        **flag(
            'the pairs: JSONL of {"question", "positive", "negative"}, or A/B items with answer_matching_behavior',
            flag="--from",
        )
    )
    overwrite: bool = Field(False, **flag("replace an existing directory"))


GROUPS = {
    "monitor": "the compliance monitor: export it, score chat logs with it, watch them drift",
    "pack": "behaviour packs: check one, or write one from a file of pairs",
}

COMMANDS: list[type[CommandSettings]] = [
    AnalyzeSettings,
    SurgerySettings,
    ExportSettings,
    PushSettings,
    EvalSettings,
    VerifySettings,
    GgufSettings,
    CvectorSettings,
    MonitorExportSettings,
    MonitorScoreSettings,
    MonitorDriftSettings,
    PackCheckSettings,
    PackInitSettings,
]
