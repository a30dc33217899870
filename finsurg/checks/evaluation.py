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
from pathlib import Path

import torch

from finsurg import DISCLAIMER, __version__, progress
from finsurg.devices import Placement
from finsurg.dtypes import weight_dtype
from finsurg.effects import effect, shift_table
from finsurg.errors import FinsurgError
from finsurg.hashing import check_sums
from finsurg.jsonfile import write_json
from finsurg.loading import load_model, load_tokenizer
from finsurg.model_source import read_config
from finsurg.packs import Pack
from finsurg.steer.arch import Architecture, by_name
from finsurg.variant.record import EVAL_NAME, EvalReport, Parity, Variant, VariantEval, VariantEvalReport, find_variants
from finsurg.variant.seal import write_report

EVAL_TABLE_NAME = "eval.md"
# fp32 compute: baked and hooked differ only by summation order, ~1e-5 per token
# baked vs hooked log-likelihoods differ only by rounding: the bias is added inside the projection
PARITY_ATOL = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _item_scores(samples: list[dict]) -> list[list[float]]:
    """Per document, the log-likelihood of each request (each choice, or the rolling total), by doc_id."""
    rows = []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        scores = []
        for resp in sample["filtered_resps"]:
            value = resp[0] if isinstance(resp, (list, tuple)) else resp
            scores.append(float(value))
        rows.append(scores)
    return rows


def _metrics(results: dict) -> dict[str, float]:
    return {
        key.split(",")[0]: float(value)
        for key, value in results.items()
        if "," in key and "stderr" not in key and isinstance(value, (int, float))
    }


class Runner:
    """One lm-eval configuration (a pack's tasks, chat template, limit) run on several models."""

    def __init__(self, pack: Pack, extra_tasks: list[str], chat: bool, limit: int | None, batch_size: int):
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        own = list(pack.manifest.tasks)
        self.tasks = own + [t for t in extra_tasks if t not in own]
        if not self.tasks:
            raise FinsurgError(f"behaviour pack {pack.source} ships no lm-eval tasks; name some with --tasks")
        self.preference_task = pack.manifest.preference_task
        self.headlines = dict(pack.manifest.tasks)
        self.titles = dict(pack.manifest.task_titles)
        self.chat, self.limit, self.batch_size = chat, limit, batch_size
        self.manager = TaskManager(include_path=str(pack.tasks_dir) if pack.tasks_dir.is_dir() else None)
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
        run = {
            "metrics": {task: _metrics(out["results"][task]) for task in self.tasks},
            "items": {task: _item_scores(out["samples"][task]) for task in self.tasks},
            "seconds": time.perf_counter() - clock,
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


def evaluate(
    paths: list[Path],
    base_override: Path | None = None,
    extra_tasks: list[str] | None = None,
    out_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    chat: bool | None = None,
    base_trusted: bool = False,
    placement: Placement | None = None,
) -> EvalReport:
    """Evaluate base, baked and hooked; record eval.json in each variant; write eval.json and eval.md to out_dir."""
    variants = [Variant(path) for path in find_variants(paths)]
    sealed = {v.directory: check_sums(v.directory) for v in variants}
    bases = {str(v.base_path(base_override)) for v in variants}
    base_files = {tuple(sorted(v.surgery.base_model.files.items())) for v in variants}
    dtypes = {v.dtype for v in variants}
    packs = {v.surgery.recipe.pack for v in variants}
    if len(bases) > 1 or len(base_files) > 1 or len(dtypes) > 1 or len(packs) > 1:
        raise FinsurgError("the variants come from different base models, dtypes or packs; evaluate them separately")
    base = Path(bases.pop())
    if not base_trusted:
        variants[0].check_base_hashes(base)  # every variant records the same base files: hash them once
    weights = weight_dtype(dtypes.pop())
    arch = by_name(variants[0].surgery.base_model.architecture)
    tokenizer = load_tokenizer(base)
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    pack = Pack.load(packs.pop())
    runner = Runner(pack, extra_tasks or [], chat, limit, batch_size)

    placement = placement or Placement.of("cpu")
    placement.require("eval (the base and one variant at a time)", read_config(base), copies=2)
    compute = placement.dtype

    def load(path: Path):
        return load_model(path, weights, compute, device=placement.device, max_memory=placement.dispatch)

    runs: dict[str, dict] = {}
    base_model = load(base)
    progress.say("lm-eval: base")
    runs["base"] = runner.run(runner.wrap(base_model, tokenizer))
    prompting = _prompting(pack)
    for name, system in prompting.items():  # the baseline steering has to beat: a plain system prompt
        progress.say(f"lm-eval: base with the {name} system prompt")
        runs[name] = runner.run(runner.wrap(base_model, tokenizer), system)
    with tempfile.TemporaryDirectory(prefix="finsurg-eval-") as scratch:
        for variant in variants:
            progress.say(f"lm-eval: {variant.name} (hooks on the base, lm-eval steered)")
            hooked = runner.wrap_steered(base_model, tokenizer, variant.offsets, arch, Path(scratch))
            runs[f"{variant.name}/hooked"] = runner.run(hooked)
            progress.say(f"lm-eval: {variant.name} (baked)")
            baked_model = load(variant.directory)
            runs[f"{variant.name}/baked"] = runner.run(runner.wrap(baked_model, tokenizer))
            del baked_model

    common = dict(
        finsurg_version=__version__,
        base_model=str(base),
        tasks=runner.tasks,
        headlines=runner.headlines,
        task_titles=runner.titles,
        chat_template=chat,
        limit=limit,
        compute_dtype=str(compute).removeprefix("torch."),
        weights_dtype=str(weights).removeprefix("torch."),
        prompting=prompting,
        metrics={name: run["metrics"] for name, run in runs.items()},
        seconds={name: round(run["seconds"], 2) for name, run in runs.items()},
        disclaimer=DISCLAIMER,
    )
    results = {
        v.name: VariantEval(
            alpha=v.surgery.alpha,
            path=str(v.directory),
            parity=parity(runs[f"{v.name}/baked"], runs[f"{v.name}/hooked"], PARITY_ATOL[compute]),
            change=_change(runs["base"]["metrics"], runs[f"{v.name}/baked"]["metrics"]),
        )
        for v in variants
    }
    common["shifts"] = _shifts(runs, runner.preference_task, variants)
    report = EvalReport(**common, variants=results, passed=all(r.parity.passed for r in results.values()))
    for variant in variants:
        own = VariantEvalReport(**common, **results[variant.name].model_dump(), variant=variant.name)
        write_report(variant.directory, own, known=sealed[variant.directory])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / EVAL_NAME, report.model_dump(mode="json"))
        (out_dir / EVAL_TABLE_NAME).write_text(render_table(report) + "\n")
    return report


def _change(base: dict, variant: dict) -> dict:
    """Per task and metric, the change from the base: points for accuracy, ratio for perplexity."""
    change = {}
    for task, metrics in variant.items():
        for metric, value in metrics.items():
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
    if task is None or task not in runs["base"]["items"]:
        return {}
    margins = {name: [row[0] - row[1] for row in run["items"][task]] for name, run in runs.items()}
    intended = {"prompt:positive": 1.0, "prompt:negative": -1.0}
    intended |= {
        f"{v.name}/{kind}": math.copysign(1.0, v.surgery.alpha) for v in variants for kind in ("baked", "hooked")
    }
    return {
        name: effect([after - before for after, before in zip(margins[name], margins["base"])], direction)
        for name, direction in intended.items()
        if name in margins
    }


def _prompting(pack: Pack) -> dict[str, str]:
    prompts = pack.manifest.system_prompts
    return {} if prompts is None else {"prompt:positive": prompts.positive, "prompt:negative": prompts.negative}


def render_table(report: EvalReport) -> str:
    """Markdown: one row per task metric; base, the base with each system prompt, each variant baked and hooked."""
    names = list(report.variants)
    header = ["task", "metric", "base", *[f"base, {name} system prompt" for name in report.prompting]] + [
        f"{n} (α {report.variants[n].alpha:+g}) {kind}" for n in names for kind in ("baked", "hooked")
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = report.metrics["base"]
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
                    cells.append(_fmt(report.metrics[f"{name}/{kind}"][task][metric]))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        par = report.variants[name].parity
        verdict = "agree" if par.passed else "DISAGREE"
        lines.append(
            f"- {name}: baked and hooked {verdict} item by item (max |Δ log-likelihood| "
            f"{par.worst:.2e}, tolerance {par.atol:.0e})"
        )
    if report.shifts:
        lines += ["", "Log-odds shift from the base on the preference task, item by item:", ""]
        lines += shift_table({name: e.model_dump() for name, e in report.shifts.items()})
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
