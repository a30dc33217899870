"""`finsurg monitor score`: a chat log in, one score line per input line out, streamed in bounded memory.

Each valid line is rendered by the monitor's chat template and classified (transformers in this process, or
vLLM's pooling runner in its own); a line that cannot be read gets an `error` line in its place and a warning
on stderr with its number. Lines are read a buffer at a time, sorted by length within it (less padding), and
written back in input order, so memory does not grow with the log.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from finsurg import progress
from finsurg.analysis.batching import chunked
from finsurg.engines.runner import run_script
from finsurg.engines.vllm_env import KV_CACHE_GIB, TIMEOUT, vllm_python
from finsurg.errors import FinsurgError
from finsurg.io.atomic import partial_dir
from finsurg.io.checkpoint import Checkpoint
from finsurg.io.hashing import check_sums
from finsurg.monitor.classifier import MonitorSpec, TransformersClassifier, embeddings_sha256, load_spec, sigmoid
from finsurg.monitor.conversations import LogEntry, Problem, read_log, render
from finsurg.steer.arch import by_name

BUFFER_BATCHES = 8


@dataclass
class Summary:
    log: str
    out: str
    engine: str
    lines: int = 0
    scored: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"line": n, "reason": ...}
    flagged: dict[str, int] = field(default_factory=dict)
    mean_score: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


def score_line(entry: LogEntry, logits: list[float], spec: MonitorSpec) -> dict:
    named = dict(zip(spec.labels, logits, strict=True))
    line = {"line": entry.line}
    if entry.time is not None:
        line["time"] = entry.time
    return line | {
        "logits": named,
        "scores": {label: sigmoid(value) for label, value in named.items()},
        "flags": {label: value > spec.thresholds[label] for label, value in named.items()},
    }


def _buffers(log: Path, size: int) -> Iterator[list[LogEntry | Problem]]:
    buffer: list[LogEntry | Problem] = []
    for item in read_log(log):
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer
            buffer = []
    if buffer:
        yield buffer


def check_base(spec: MonitorSpec, directory: Path, model_path: Path, model_name: str) -> None:
    """Refuse a monitor built from another base than the model the log's traffic came from."""
    arch = by_name(spec.base["architecture"])
    if embeddings_sha256(Checkpoint.open(model_path), arch) != spec.base["embeddings_sha256"]:
        raise FinsurgError(
            f"monitor {directory} was built from {spec.base['name']}, not {model_name} (their embeddings differ)"
        )


def score_log(
    directory: Path,
    log: Path,
    out: Path,
    engine: str = "transformers",
    batch_size: int = 32,
    device: torch.device | None = None,
    python: str | None = None,
) -> Summary:
    """Score every line of `log` into `out` (complete or not at all)."""
    spec = load_spec(directory)
    try:
        check_sums(directory)
    except FinsurgError as exc:
        raise FinsurgError(f"monitor {directory} does not match its SHA256SUMS: {exc}") from None
    if not log.is_file():
        raise FinsurgError(f"log not found: {log}")
    if out.resolve() == log.resolve():
        raise FinsurgError("--out must not be the log itself")
    summary = Summary(str(log), str(out), engine, flagged=dict.fromkeys(spec.labels, 0))
    sums = dict.fromkeys(spec.labels, 0.0)
    clock = time.perf_counter()
    partial = partial_dir(out)
    try:
        with open(partial, "w") as handle, progress.bar(desc="monitor: scoring", unit=" lines") as bar:
            for buffer, logits in _scored(directory, log, engine, batch_size, device, python):
                for item in buffer:
                    summary.lines += 1
                    if isinstance(item, Problem):
                        summary.skipped.append({"line": item.line, "reason": item.reason})
                        print(f"finsurg: warning: line {item.line} skipped: {item.reason}", file=sys.stderr)
                        handle.write(json.dumps({"line": item.line, "error": item.reason}) + "\n")
                        continue
                    line = score_line(item, logits[item.line], spec)
                    summary.scored += 1
                    for label in spec.labels:
                        summary.flagged[label] += line["flags"][label]
                        sums[label] += line["scores"][label]
                    handle.write(json.dumps(line) + "\n")
                bar.update(len(buffer))
        if summary.scored == 0:
            raise FinsurgError(
                f"{log}: no valid line to score"
                + (f" ({len(summary.skipped)} skipped)" if summary.skipped else " (the log is empty)")
            )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - clock
    summary.mean_score = {label: sums[label] / summary.scored for label in spec.labels}
    summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return summary


def _scored(directory, log, engine, batch_size, device, python) -> Iterator[tuple[list, dict[int, list[float]]]]:
    """Each buffer of log items with the logits of its valid lines, by line number."""
    if engine == "vllm":
        yield from _scored_by_vllm(directory, log, batch_size, python)
        return
    model = TransformersClassifier(directory, device)
    for buffer in _buffers(log, batch_size * BUFFER_BATCHES):
        entries = [item for item in buffer if isinstance(item, LogEntry)]
        texts = {entry.line: render(model.tokenizer, entry.messages) for entry in entries}
        order = sorted(texts, key=lambda line: len(texts[line]))
        logits: dict[int, list[float]] = {}
        for lines in chunked(order, batch_size):
            logits.update(zip(lines, model.logits([texts[line] for line in lines]).tolist(), strict=True))
        yield buffer, logits


def _scored_by_vllm(directory: Path, log: Path, batch_size: int, python: str | None):
    """vLLM classifies the rendered texts, written to a scratch file, in one run; its logits stream back."""
    from transformers import AutoTokenizer

    python = vllm_python(python)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with tempfile.TemporaryDirectory(prefix="finsurg-monitor-") as scratch:
        texts = Path(scratch) / "texts.jsonl"
        valid = 0
        with open(texts, "w") as handle:
            for item in read_log(log):
                if isinstance(item, LogEntry):
                    handle.write(json.dumps(render(tokenizer, item.messages)) + "\n")
                    valid += 1
        if not valid:  # nothing for vLLM to do: the problems are reported without starting it
            yield from ((buffer, {}) for buffer in _buffers(log, batch_size * BUFFER_BATCHES))
            return
        request = {"model": str(directory.resolve()), "texts": str(texts), "batch_size": batch_size * 8}
        reply = run_script(
            python, "vllm_classify.py", request, Path(scratch), f"vLLM on {directory}", TIMEOUT, KV_CACHE_GIB
        )
        with open(reply["logits"]) as logits:
            for buffer in _buffers(log, batch_size * BUFFER_BATCHES):
                entries = [item for item in buffer if isinstance(item, LogEntry)]
                yield buffer, {entry.line: json.loads(next(logits)) for entry in entries}
