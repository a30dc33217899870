"""`finsurg eval`: lm-eval on the base, each baked variant, and the hook version of each variant.

The tasks are those of the recipe's behaviour pack (plus any named with --tasks). The hook
version is lm-eval's own `steered` model type on the unmodified base, adding the offsets recorded
in `finsurg_offsets.safetensors` at the architecture's lm-eval hook point. Baked and hooked runs
of one variant must give the same log-likelihood for every request, or the evaluation fails.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from finsurg import __version__, progress
from finsurg.checks.eval_options import EvalOptions
from finsurg.checks.pack_tasks import pack_tasks
from finsurg.devices import Placement
from finsurg.dtypes import name_of, weight_dtype
from finsurg.effects import effect
from finsurg.engines.runner import run_script
from finsurg.engines.vllm_env import ENGINE_ENV, vllm_python
from finsurg.errors import FinsurgError
from finsurg.io.hashing import check_sums
from finsurg.jsonfile import write_json
from finsurg.models.loading import load_model, load_tokenizer
from finsurg.models.source import read_config
from finsurg.packs import Pack
from finsurg.steer.arch import Architecture, by_name
from finsurg.steer.finding_tables import shift_table
from finsurg.steer.hooks import offsets_added
from finsurg.variant.directory import Variant, find_variants
from finsurg.variant.eval_report import BASE_RUN, EvalReport, Parity, RunKey, VariantEval, VariantEvalReport
from finsurg.variant.record import EVAL_NAME
from finsurg.variant.seal import write_report

EVAL_TABLE_NAME = "eval.md"
# fp32 compute: baked and hooked differ only by summation order, ~1e-5 per token
# baked vs hooked log-likelihoods differ only by rounding: the bias is added inside the projection
PARITY_ATOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def item_scores(samples: list[dict]) -> list[list[float]]:
    """Per document, the log-likelihood of each request (each choice, or the rolling total), by doc_id."""
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        rows.append([float(r[0] if isinstance(r, (list, tuple)) else r) for r in sample["filtered_resps"]])
    return rows


def metrics(results: dict) -> dict[str, float]:
    return {
        key.split(",")[0]: float(value)
        for key, value in results.items()
        if "," in key and "stderr" not in key and isinstance(value, (int, float))
    }


class Runner:
    """One lm-eval configuration (a pack's tasks, chat template, limit) run on several models."""

    def __init__(
        self, pack: Pack, extra_tasks: list[str], chat: bool, limit: int | None, batch_size: int, scratch: Path
    ):
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        tasks = pack_tasks(pack, scratch)
        own = list(tasks.headlines)
        self.tasks = own + [t for t in extra_tasks if t not in own]
        self.preference_task = tasks.preference
        self.headlines = tasks.headlines
        self.titles = tasks.titles
        self.chat, self.limit, self.batch_size = chat, limit, batch_size
        self.include_path = tasks.include_path
        self.manager = TaskManager(include_path=self.include_path)
        unknown = [t for t in self.tasks if t not in self.manager.all_tasks]
        if unknown:
            raise FinsurgError(f"unknown lm-eval task {unknown[0]!r}")

    def run(self, lm, system: str | None = None) -> dict:
        from lm_eval import simple_evaluate

        clock = time.perf_counter()
        with progress.silenced_stderr():
            out = simple_evaluate(
                lm,
                tasks=self.tasks,
                task_manager=self.manager,
                apply_chat_template=self.chat,
                limit=self.limit,
                system_instruction=system,
                log_samples=True,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
        return self._read(out["results"], out["samples"], time.perf_counter() - clock)

    def run_vllm(self, python: str, plan: list[tuple[str, Path, str | None]], dtype: str) -> dict[str, dict]:
        """lm-eval's vllm model type on each (run name, model directory, system prompt), in one vLLM process."""
        request = {
            "tasks": self.tasks,
            "include_path": self.include_path,
            "chat": self.chat,
            "limit": self.limit,
            "dtype": dtype,
            "runs": [{"name": name, "model": str(path), "system": system} for name, path, system in plan],
        }
        with tempfile.TemporaryDirectory(prefix="finsurg-lmeval-vllm-") as scratch:
            # lm-eval's batches need a larger KV cache than finsurg's other vLLM runs
            env = {**ENGINE_ENV, "VLLM_CPU_KVCACHE_SPACE": "4"}
            reply = run_script(python, "lmeval_vllm.py", request, Path(scratch), "lm-eval on vLLM", env=env)
        return {name: self._read(run["results"], run["samples"], run["seconds"]) for name, run in reply["runs"].items()}

    def _read(self, results: dict, samples: dict, seconds: float) -> dict:
        """Each task's metrics and per-item scores, the preference task's mean log-odds, each headline metric."""
        run = {
            "metrics": {task: metrics(results[task]) for task in self.tasks},
            "items": {task: item_scores(samples[task]) for task in self.tasks},
            "seconds": seconds,
        }
        if self.preference_task in run["items"]:
            margins = [scores[0] - scores[1] for scores in run["items"][self.preference_task]]
            run["metrics"][self.preference_task]["log_odds"] = sum(margins) / len(margins)
        for task in self.tasks:
            self.headlines.setdefault(task, next(iter(run["metrics"][task])))
        return run

    def wrap(self, model, tokenizer):
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, device=str(model.device))

    def wrap_steered(self, model, tokenizer, offsets: dict[int, torch.Tensor], arch: Architecture, scratch: Path):
        """lm-eval's `steered` model: adds offsets[L] at the architecture's hook point, at every position."""
        from lm_eval.models.hf_steered import SteeredModel

        steer_file = scratch / "steer.pt"
        torch.save(
            {
                arch.lm_eval_hook(layer): {
                    "steering_vector": vector,
                    "steering_coefficient": 1.0,
                    "action": "add",
                    "bias": None,
                    "head_index": None,
                }
                for layer, vector in sorted(offsets.items())
            },
            steer_file,
        )
        return SteeredModel(
            pretrained=model,
            steer_path=str(steer_file),
            tokenizer=tokenizer,
            batch_size=self.batch_size,
            device=str(model.device),
        )


def parity(baked: dict, hooked: dict, atol: float = PARITY_ATOL[torch.float32]) -> Parity:
    """Per task, the largest |Δ log-likelihood| between the baked and hooked runs of one variant."""
    per_task = {}
    for task, rows in baked["items"].items():
        other = hooked["items"][task]
        if len(rows) != len(other) or any(len(a) != len(b) for a, b in zip(rows, other)):
            per_task[task] = math.inf
            continue
        per_task[task] = max((abs(a - b) for ra, rb in zip(rows, other) for a, b in zip(ra, rb)), default=0.0)
    worst = max(per_task.values(), default=0.0)
    return Parity(max_abs_loglik_diff=per_task, worst=worst, atol=atol, passed=worst <= atol)


@dataclass
class _Subject:
    """What one evaluation covers: variants of one base, dtype and pack, with what they share."""

    variants: list[Variant]
    sealed: dict[Path, dict[str, str]]
    base: Path
    weights: torch.dtype
    arch: Architecture
    pack: Pack

    @classmethod
    def of(cls, paths: list[Path], base_override: Path | None, base_trusted: bool) -> _Subject:
        variants = [Variant(path) for path in find_variants(paths)]
        sealed = {v.directory: check_sums(v.directory) for v in variants}
        bases = {str(v.base_path(base_override)) for v in variants}
        base_files = {tuple(sorted(v.record.base_model.files.items())) for v in variants}
        dtypes = {v.dtype for v in variants}
        packs = {v.record.recipe.pack for v in variants}
        if len(bases) > 1 or len(base_files) > 1 or len(dtypes) > 1 or len(packs) > 1:
            raise FinsurgError(
                "the variants come from different base models, dtypes or packs; evaluate them separately"
            )
        base = Path(bases.pop())
        if not base_trusted:
            variants[0].check_base_hashes(base)  # every variant records the same base files: hash them once
        arch = by_name(variants[0].record.base_model.architecture)
        return cls(variants, sealed, base, weight_dtype(dtypes.pop()), arch, Pack.load(packs.pop()))


def evaluate(
    paths: list[Path],
    options: EvalOptions,
    out_dir: Path | None = None,
    placement: Placement | None = None,
    base_override: Path | None = None,
    base_trusted: bool = False,
) -> EvalReport:
    """Evaluate base, baked and hooked; record eval.json in each variant; write eval.json and eval.md to out_dir.

    With engine "vllm", lm-eval's vllm model type runs the base, the prompting baselines and the baked
    variants (the route for models too large for transformers here); hook parity stays on the
    transformers route, where the model fits memory, and the report names each run's engine.
    """
    subject = _Subject.of(paths, base_override, base_trusted)
    placement = placement or Placement.of("cpu")
    tokenizer = load_tokenizer(subject.base)
    chat = bool(getattr(tokenizer, "chat_template", None)) if options.chat is None else options.chat
    prompting = _prompting(subject.pack)  # the baseline steering has to beat: a plain system prompt
    with tempfile.TemporaryDirectory(prefix="finsurg-tasks-") as scratch:
        runner = Runner(subject.pack, options.tasks, chat, options.limit, options.eval_batch_size, Path(scratch))
        runs = _runs(runner, subject, options, placement, tokenizer, prompting)
    report = _report(runner, subject, runs, prompting, placement.dtype)
    for variant in subject.variants:
        common = report.model_dump(exclude={"variants", "passed"})
        own = VariantEvalReport(**common, **report.variants[variant.name].model_dump(), variant=variant.name)
        write_report(variant.directory, own, known=subject.sealed[variant.directory])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / EVAL_NAME, report.model_dump(mode="json"))
        (out_dir / EVAL_TABLE_NAME).write_text(render_table(report) + "\n")
    return report


def _runs(runner, subject: _Subject, options: EvalOptions, placement, tokenizer, prompting):
    """Every lm-eval run by key, the engine of each, and how hook parity was checked."""
    runs: dict[str, dict] = {}
    engines: dict[str, str] = {}
    parity_note = "baked and hooked both on transformers"
    config = read_config(subject.base)
    if options.engine == "vllm":
        plan = [(str(BASE_RUN), subject.base, None)] + [
            (name, subject.base, system) for name, system in prompting.items()
        ]
        plan += [(str(RunKey.of(v.name, "baked")), v.directory, None) for v in subject.variants]
        progress.say(f"lm-eval on vLLM: {len(plan)} runs")
        runs.update(runner.run_vllm(vllm_python(options.vllm_python), plan, name_of(placement.dtype)))
        engines.update({name: "vllm" for name in runs})
        if not placement.fits(config, copies=2):
            parity_note = (
                "not run: the model does not fit memory for the transformers route; finsurg verify (the layer-local "
                "proof, and --full) is the parity check at this size"
            )
            return runs, engines, parity_note
    else:
        placement.require("eval (the base and one variant at a time)", config, copies=2)
    runs.update(_transformers_runs(runner, subject, placement, tokenizer, prompting, options.engine))
    engines.update({name: "transformers" for name in runs if name not in engines})
    return runs, engines, parity_note


def _report(runner, subject: _Subject, done: tuple, prompting, compute) -> EvalReport:
    """`done` is what _runs returns: every run by key, the engine of each, and how hook parity was checked."""
    runs, engines, parity_note = done
    parity_kind = "baked" if engines.get(str(BASE_RUN)) == "transformers" else "baked:transformers"
    results = {}
    for v in subject.variants:
        hooked = runs.get(str(RunKey.of(v.name, "hooked")))
        results[v.name] = VariantEval(
            alpha=v.record.alpha,
            path=str(v.directory),
            parity=None
            if hooked is None
            else parity(runs[str(RunKey.of(v.name, parity_kind))], hooked, PARITY_ATOL[compute]),
            change=_change(runs[str(BASE_RUN)]["metrics"], runs[str(RunKey.of(v.name, "baked"))]["metrics"]),
        )
    return EvalReport(
        finsurg_version=__version__,
        base_model=str(subject.base),
        tasks=runner.tasks,
        headlines=runner.headlines,
        task_titles=runner.titles,
        chat_template=runner.chat,
        limit=runner.limit,
        compute_dtype=name_of(compute),
        weights_dtype=name_of(subject.weights),
        prompting=prompting,
        engines=engines,
        parity_route=parity_note,
        metrics={name: run["metrics"] for name, run in runs.items()},
        seconds={name: round(run["seconds"], 2) for name, run in runs.items()},
        shifts=_shifts(runs, runner.preference_task, subject.variants),
        disclaimer=subject.pack.disclaimer,
        variants=results,
        passed=all(r.parity is None or r.parity.passed for r in results.values()),
    )


def _transformers_runs(runner, subject: _Subject, placement, tokenizer, prompting, engine) -> dict:
    """lm-eval on transformers: the hooked runs (lm-eval's steered model on the base) and the baked ones;
    the base and prompting runs too unless vLLM already ran them."""

    def load(path: Path):
        return load_model(
            path, subject.weights, placement.dtype, device=placement.device, max_memory=placement.dispatch
        )

    runs = {}
    base_model = load(subject.base)
    if engine == "transformers":
        progress.say("lm-eval: base")
        runs[str(BASE_RUN)] = runner.run(runner.wrap(base_model, tokenizer))
        for name, system in prompting.items():
            progress.say(f"lm-eval: base with the {RunKey.parse(name).side} system prompt")
            runs[name] = runner.run(runner.wrap(base_model, tokenizer), system)
    baked_kind = "baked" if engine == "transformers" else "baked:transformers"
    with tempfile.TemporaryDirectory(prefix="finsurg-eval-") as scratch:
        for variant in subject.variants:
            if variant.surgery.gated:  # lm-eval's steered model adds a constant; gated neurons need our own hooks
                progress.say(f"lm-eval: {variant.name} (conditional hooks on the base)")
                with offsets_added(base_model, variant.surgery, subject.arch, variant.weight_dtype):
                    runs[str(RunKey.of(variant.name, "hooked"))] = runner.run(runner.wrap(base_model, tokenizer))
            else:
                progress.say(f"lm-eval: {variant.name} (hooks on the base, lm-eval steered)")
                hooked = runner.wrap_steered(
                    base_model, tokenizer, variant.surgery.always(), subject.arch, Path(scratch)
                )
                runs[str(RunKey.of(variant.name, "hooked"))] = runner.run(hooked)
            progress.say(f"lm-eval: {variant.name} (baked)")
            baked_model = load(variant.directory)
            runs[str(RunKey.of(variant.name, baked_kind))] = runner.run(runner.wrap(baked_model, tokenizer))
            del baked_model
    return runs


def _change(base: dict, variant: dict) -> dict:
    """Per task and metric, the change from the base: points for accuracy, ratio for perplexity."""
    change = {}
    for task, values in variant.items():
        for metric, value in values.items():
            before = base[task].get(metric)
            if before is None:
                continue
            if "perplexity" in metric:
                change[f"{task}/{metric}"] = value / before - 1.0
            else:
                change[f"{task}/{metric}"] = value - before
    return change


def _shifts(runs: dict[str, dict], task: str | None, variants: list[Variant]) -> dict[str, dict]:
    """Per run, its preference-task log-odds shift from the base, judged item by item in its intended direction."""
    base = str(BASE_RUN)
    if task is None or task not in runs[base]["items"]:
        return {}
    margins = {name: [row[0] - row[1] for row in run["items"][task]] for name, run in runs.items()}
    intended = {str(RunKey.prompt("positive")): 1.0, str(RunKey.prompt("negative")): -1.0}
    intended |= {
        str(RunKey.of(v.name, kind)): math.copysign(1.0, v.record.alpha)
        for v in variants
        for kind in ("baked", "hooked")
    }
    return {
        name: effect([after - before for after, before in zip(margins[name], margins[base])], direction)
        for name, direction in intended.items()
        if name in margins
    }


def _prompting(pack: Pack) -> dict[str, str]:
    prompts = pack.manifest.system_prompts
    if prompts is None:
        return {}
    return {str(RunKey.prompt("positive")): prompts.positive, str(RunKey.prompt("negative")): prompts.negative}


def render_table(report: EvalReport) -> str:
    """Markdown: one row per task metric; base, the base with each system prompt, each variant baked and hooked."""
    names = list(report.variants)
    header = ["task", "metric", "base", *[f"base, {name} system prompt" for name in report.prompting]] + [
        f"{n} (α {report.variants[n].alpha:+g}) {kind}" for n in names for kind in ("baked", "hooked")
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = report.metrics[str(BASE_RUN)]
    for task in report.tasks:
        for metric, value in base[task].items():
            cells = [
                task,
                metric,
                _fmt(value),
                *[_fmt(report.metrics[name][task][metric]) for name in report.prompting],
            ]
            for name in names:
                for kind in ("baked", "hooked"):
                    run = report.metrics.get(str(RunKey.of(name, kind)))
                    cells.append(_fmt(run[task][metric]) if run else "—")
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        par = report.variants[name].parity
        if par is None:
            lines.append(f"- {name}: hook parity {report.parity_route}")
            continue
        verdict = "agree" if par.passed else "DISAGREE"
        lines.append(
            f"- {name}: baked and hooked {verdict} item by item (max |Δ log-likelihood| "
            f"{par.worst:.2e}, tolerance {par.atol:.0e}; {report.parity_route})"
        )
    by_engine = sorted(set(report.engines.values()))
    if by_engine != ["transformers"]:
        lines.append("- engines: " + "; ".join(f"{run}: {engine}" for run, engine in sorted(report.engines.items())))
    if report.shifts:
        lines += ["", "Log-odds shift from the base on the preference task, item by item:", ""]
        lines += shift_table(report.shifts)
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
