"""`finsurg eval`: lm-eval on the base, each baked variant, and the hook version of each variant.

The hook version is lm-eval's own `steered` model type on the unmodified base, adding the offsets
recorded in `finsurg_offsets.safetensors` after each steered decoder layer. Baked and hooked runs
of one variant must give the same log-likelihood for every request, or the evaluation fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch
from tqdm import tqdm

from finsurg import DISCLAIMER, __version__
from finsurg.errors import FinsurgError
from finsurg.exporter.verify import VariantRecord
from finsurg.exporter.seal import seal
from finsurg.hashing import check_sums
from finsurg.loading import DTYPES, load_model, load_tokenizer

EVAL_NAME = "eval.json"
EVAL_TABLE_NAME = "eval.md"
EVAL_FORMAT = "finsurg.eval/1"
FINSURG_TASKS = ["finsurg_advice", "finsurg_general", "finsurg_prose"]
ADVICE_TASK = "finsurg_advice"
# fp32 compute: baked and hooked differ only by summation order, ~1e-5 per token
PARITY_ATOL = 1e-3
HEADLINE = {"finsurg_advice": "acc", "finsurg_general": "acc", "finsurg_prose": "word_perplexity"}


def tasks_dir() -> Path:
    return Path(str(resources.files("finsurg") / "data" / "tasks"))


def find_variants(paths: list[Path]) -> list[Path]:
    """Variant directories, given as themselves or as an export directory that holds them."""
    from finsurg.exporter.bake import SURGERY_NAME

    found = []
    for path in paths:
        if not path.is_dir():
            raise FinsurgError(f"not a directory: {path}")
        if (path / SURGERY_NAME).is_file():
            found.append(path)
            continue
        children = sorted(p for p in path.iterdir() if (p / SURGERY_NAME).is_file())
        if not children:
            raise FinsurgError(f"{path} holds no finsurg variant (no {SURGERY_NAME} in it or its subdirectories)")
        found += children
    return found


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
    """One lm-eval configuration (tasks, chat template, limit) run on several models."""

    def __init__(self, tasks: list[str], chat: bool, limit: int | None, batch_size: int, progress: bool):
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        self.tasks, self.chat, self.limit, self.batch_size = tasks, chat, limit, batch_size
        self.progress = progress
        self.manager = TaskManager(include_path=str(tasks_dir()))
        unknown = [t for t in tasks if t not in self.manager.all_tasks]
        if unknown:
            raise FinsurgError(f"unknown lm-eval task {unknown[0]!r}")

    def run(self, lm) -> dict:
        from lm_eval import simple_evaluate

        clock = time.perf_counter()
        # lm-eval's own progress bars take no switch; they write to whatever sys.stderr is then
        with contextlib.nullcontext() if self.progress else contextlib.redirect_stderr(io.StringIO()):
            out = simple_evaluate(
                lm,
                tasks=self.tasks,
                task_manager=self.manager,
                apply_chat_template=self.chat,
                limit=self.limit,
                log_samples=True,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
        run = {
            "metrics": {task: _metrics(out["results"][task]) for task in self.tasks},
            "items": {task: _item_scores(out["samples"][task]) for task in self.tasks},
            "seconds": time.perf_counter() - clock,
        }
        if ADVICE_TASK in run["items"]:
            margins = [scores[0] - scores[1] for scores in run["items"][ADVICE_TASK]]
            run["metrics"][ADVICE_TASK]["log_odds"] = sum(margins) / len(margins)
        return run

    def wrap(self, model, tokenizer):
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size, device=str(model.device))

    def wrap_steered(self, model, tokenizer, offsets: dict[int, torch.Tensor], scratch: Path):
        """lm-eval's `steered` model: adds offsets[L] to the output of decoder layer L at every position."""
        from lm_eval.models.hf_steered import SteeredModel

        steer_file = scratch / "steer.pt"
        torch.save(
            {
                f"layers.{layer}": {"steering_vector": vector, "steering_coefficient": 1.0, "action": "add",
                                    "bias": None, "head_index": None}
                for layer, vector in sorted(offsets.items())
            },
            steer_file,
        )
        return SteeredModel(pretrained=model, steer_path=str(steer_file), tokenizer=tokenizer,
                            batch_size=self.batch_size, device=str(model.device))


def parity(baked: dict, hooked: dict) -> dict:
    """Per task, the largest |Δ log-likelihood| between the baked and hooked runs of one variant."""
    per_task = {}
    for task, rows in baked["items"].items():
        other = hooked["items"][task]
        if len(rows) != len(other) or any(len(a) != len(b) for a, b in zip(rows, other)):
            per_task[task] = math.inf
            continue
        per_task[task] = max((abs(a - b) for ra, rb in zip(rows, other) for a, b in zip(ra, rb)), default=0.0)
    worst = max(per_task.values(), default=0.0)
    return {"max_abs_loglik_diff": per_task, "worst": worst, "atol": PARITY_ATOL, "passed": worst <= PARITY_ATOL}


def evaluate(
    paths: list[Path],
    base_override: Path | None = None,
    extra_tasks: list[str] | None = None,
    out_dir: Path | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    chat: bool | None = None,
    base_trusted: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate base, baked and hooked; write eval.json and eval.md; raise if parity fails."""
    variants = [VariantRecord(path) for path in find_variants(paths)]
    sealed = {record.directory: check_sums(record.directory) for record in variants}
    bases = {str(v.base_path(base_override)) for v in variants}
    base_files = {json.dumps(v.surgery["base_model"]["files"], sort_keys=True) for v in variants}
    dtypes = {v.dtype for v in variants}
    if len(bases) > 1 or len(base_files) > 1 or len(dtypes) > 1:
        raise FinsurgError("the variants come from different base models or dtypes; evaluate them separately")
    base = Path(bases.pop())
    if not base_trusted:
        variants[0].check_base_hashes(base)  # every variant records the same base files: hash them once
    weights = DTYPES[dtypes.pop()]
    tokenizer = load_tokenizer(base)
    chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    tasks = FINSURG_TASKS + [t for t in (extra_tasks or []) if t not in FINSURG_TASKS]
    runner = Runner(tasks, chat, limit, batch_size, progress)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs: dict[str, dict] = {}
    base_model = load_model(base, weights, torch.float32).to(device)
    _say(progress, "lm-eval: base")
    runs["base"] = runner.run(runner.wrap(base_model, tokenizer))
    with tempfile.TemporaryDirectory(prefix="finsurg-eval-") as scratch:
        for record in variants:
            name = record.surgery["variant"]
            _say(progress, f"lm-eval: {name} (hooks on the base, lm-eval steered)")
            hooked = runner.wrap_steered(base_model, tokenizer, record.offsets, Path(scratch))
            runs[f"{name}/hooked"] = runner.run(hooked)
            _say(progress, f"lm-eval: {name} (baked)")
            baked_model = load_model(record.directory, weights, torch.float32).to(device)
            runs[f"{name}/baked"] = runner.run(runner.wrap(baked_model, tokenizer))
            del baked_model

    report = {
        "format": EVAL_FORMAT,
        "finsurg_version": __version__,
        "base_model": str(base),
        "tasks": tasks,
        "chat_template": chat,
        "limit": limit,
        "compute_dtype": "float32",
        "weights_dtype": str(weights).removeprefix("torch."),
        "metrics": {name: run["metrics"] for name, run in runs.items()},
        "seconds": {name: round(run["seconds"], 2) for name, run in runs.items()},
        "variants": {},
        "disclaimer": DISCLAIMER,
    }
    for record in variants:
        name = record.surgery["variant"]
        report["variants"][name] = {
            "alpha": record.surgery["alpha"],
            "path": str(record.directory),
            "parity": parity(runs[f"{name}/baked"], runs[f"{name}/hooked"]),
            "change": _change(runs["base"]["metrics"], runs[f"{name}/baked"]["metrics"]),
        }
    report["passed"] = all(v["parity"]["passed"] for v in report["variants"].values())
    _write(report, variants, sealed, out_dir)
    return report


def headline(task: str, metrics: dict[str, float]) -> str:
    """The metric a task is summarised by: finsurg's choice for its own tasks, else the first reported."""
    return HEADLINE.get(task) or next(iter(metrics))


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


def _write(report: dict, variants: list[VariantRecord], sealed: dict[Path, dict], out_dir: Path | None) -> None:
    table = render_table(report)
    for record in variants:
        name = record.surgery["variant"]
        own = {k: v for k, v in report.items() if k != "variants"} | {"variant": name, **report["variants"][name]}
        (record.directory / EVAL_NAME).write_text(json.dumps(own, indent=2, sort_keys=True) + "\n")
        seal(record.directory, known={k: v for k, v in sealed[record.directory].items() if k != EVAL_NAME})
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / EVAL_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (out_dir / EVAL_TABLE_NAME).write_text(table + "\n")


def render_table(report: dict) -> str:
    """Markdown: one row per task metric; base, then each variant baked and hooked."""
    names = list(report["variants"])
    header = ["task", "metric", "base"] + [f"{n} (α {report['variants'][n]['alpha']:+g}) {kind}" for n in names
                                           for kind in ("baked", "hooked")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base = report["metrics"]["base"]
    for task in report["tasks"]:
        for metric, value in base[task].items():
            cells = [task, metric, _fmt(value)]
            for name in names:
                for kind in ("baked", "hooked"):
                    cells.append(_fmt(report["metrics"][f"{name}/{kind}"][task][metric]))
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name in names:
        par = report["variants"][name]["parity"]
        verdict = "agree" if par["passed"] else "DISAGREE"
        lines.append(f"- {name}: baked and hooked {verdict} item by item (max |Δ log-likelihood| "
                     f"{par['worst']:.2e}, tolerance {par['atol']:.0e})")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"


def _say(progress: bool, text: str) -> None:
    if progress:
        tqdm.write(text, file=sys.stderr)
