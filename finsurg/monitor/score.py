"""`finsurg monitor score`: a chat log in, one score line per input line out, streamed in bounded memory.

Each valid line is rendered by the monitor's chat template, tokenized, and classified (transformers in this
process, or vLLM's pooling runner in its own, fed the same token ids); a line that cannot be read gets an
`error` line in its place and a warning on stderr with its number. A conversation longer than the token
budget (default: the monitor's context) keeps its last tokens, which hold the reply being judged; the cut is
warned about and recorded in its line. Lines are read a buffer at a time, sorted by length within it, batched
by padded tokens as well as by count, and written back in input order, so memory does not grow with the log
or with one long conversation.
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
from finsurg.engines.runner import run_script
from finsurg.engines.vllm_env import ENGINE_ENV, TIMEOUT, vllm_python
from finsurg.errors import FinsurgError
from finsurg.io.atomic import partial_dir
from finsurg.io.checkpoint import Checkpoint
from finsurg.io.hashing import check_sums
from finsurg.models.source import read_config
from finsurg.monitor.classifier import MonitorSpec, TransformersClassifier, embeddings_sha256, load_spec, sigmoid
from finsurg.monitor.conversations import LogEntry, Problem, read_log, render
from finsurg.monitor.monitor_options import ScoreOptions
from finsurg.steer.arch import by_name

BUFFER_BATCHES = 8


@dataclass(frozen=True)
class Encoded:
    """A log line's token ids as scored (its last `kept` of `tokens`); vLLM's side keeps only the counts."""

    ids: list[int]
    tokens: int
    kept: int

    @property
    def cut(self) -> bool:
        return self.kept < self.tokens


def encode_entries(tokenizer, entries: list[LogEntry], max_tokens: int) -> dict[int, Encoded]:
    """Each entry rendered by the chat template and tokenized, cut to its last `max_tokens` tokens."""
    encoded = {}
    for entry in entries:
        ids = tokenizer(render(tokenizer, entry.messages))["input_ids"]
        encoded[entry.line] = Encoded(ids[-max_tokens:], len(ids), min(len(ids), max_tokens))
    return encoded


def token_batches(encoded: dict[int, Encoded], limits: ScoreOptions) -> Iterator[list[int]]:
    """Line numbers, shortest first, in batches of at most `batch_size` lines and `batch_tokens` padded tokens."""
    batch: list[int] = []
    for line in sorted(encoded, key=lambda line: len(encoded[line].ids)):
        longest = len(encoded[line].ids)  # sorted: the newcomer is the batch's longest
        if batch and (len(batch) >= limits.batch_size or (len(batch) + 1) * longest > limits.batch_tokens):
            yield batch
            batch = []
        batch.append(line)
    if batch:
        yield batch


@dataclass
class Summary:
    log: str
    out: str
    engine: str
    lines: int = 0
    scored: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"line": n, "reason": ...}
    truncated: list[int] = field(default_factory=list)  # lines scored on their last --max-tokens tokens
    flagged: dict[str, int] = field(default_factory=dict)
    mean_score: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def per_second(self) -> float:
        return self.scored / self.seconds if self.seconds else 0.0


def score_line(entry: LogEntry, logits: list[float], spec: MonitorSpec, encoded: Encoded) -> dict:
    named = dict(zip(spec.labels, logits, strict=True))
    line = {"line": entry.line}
    if entry.time is not None:
        line["time"] = entry.time
    if encoded.cut:
        line["truncated"] = {"tokens": encoded.tokens, "kept": encoded.kept}
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
    limits: ScoreOptions = ScoreOptions(),
    device: torch.device | None = None,
    python: str | None = None,
) -> Summary:
    """Score every line of `log` into `out` (complete or not at all)."""
    spec = load_spec(directory)
    limits = _within_context(directory, limits)
    _check_inputs(directory, log, out)
    tally = _Tally(spec, Summary(str(log), str(out), engine, flagged=dict.fromkeys(spec.labels, 0)), limits)
    clock = time.perf_counter()
    partial = partial_dir(out)
    try:
        with open(partial, "w") as handle, progress.bar(desc="monitor: scoring", unit=" lines") as bar:
            for buffer, encoded, logits in _scored(directory, log, engine, limits, device, python):
                for item in buffer:
                    handle.write(json.dumps(tally.line(item, encoded, logits)) + "\n")
                bar.update(len(buffer))
        summary = tally.summary
        if summary.scored == 0:
            raise FinsurgError(
                f"{log}: no valid line to score"
                + (f" ({len(summary.skipped)} skipped)" if summary.skipped else " (the log is empty)")
            )
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - clock
    summary.mean_score = {label: tally.sums[label] / summary.scored for label in spec.labels}
    summary.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return summary


def _within_context(directory: Path, limits: ScoreOptions) -> ScoreOptions:
    """The token budget per conversation: the monitor's context unless a smaller one is asked for."""
    context = int(read_config(directory).get("max_position_embeddings") or 0) or None
    if limits.max_tokens is None:
        return limits.model_copy(update={"max_tokens": context})
    if context is not None and limits.max_tokens > context:
        raise FinsurgError(f"--max-tokens {limits.max_tokens} is past the monitor's context ({context} tokens)")
    return limits


def _check_inputs(directory: Path, log: Path, out: Path) -> None:
    try:
        check_sums(directory)
    except FinsurgError as exc:
        raise FinsurgError(f"monitor {directory} does not match its SHA256SUMS: {exc}") from None
    if not log.is_file():
        raise FinsurgError(f"log not found: {log}")
    if out.resolve() == log.resolve():
        raise FinsurgError("--out must not be the log itself")


@dataclass
class _Tally:
    """Each log item's output line, counted into the summary, with a warning on stderr where it was cut or bad."""

    spec: MonitorSpec
    summary: Summary
    limits: ScoreOptions
    sums: dict[str, float] = field(default_factory=dict)

    def line(self, item: LogEntry | Problem, encoded: dict[int, Encoded], logits: dict[int, list[float]]) -> dict:
        summary = self.summary
        summary.lines += 1
        if isinstance(item, Problem):
            summary.skipped.append({"line": item.line, "reason": item.reason})
            print(f"finsurg: warning: line {item.line} skipped: {item.reason}", file=sys.stderr)
            return {"line": item.line, "error": item.reason}
        line = score_line(item, logits[item.line], self.spec, encoded[item.line])
        if "truncated" in line:
            summary.truncated.append(item.line)
            print(
                f"finsurg: warning: line {item.line} is {encoded[item.line].tokens} tokens; scored its "
                f"last {self.limits.max_tokens} (--max-tokens)",
                file=sys.stderr,
            )
        summary.scored += 1
        for label in self.spec.labels:
            summary.flagged[label] += line["flags"][label]
            self.sums[label] = self.sums.get(label, 0.0) + line["scores"][label]
        return line


def _scored(directory, log, engine, limits: ScoreOptions, device, python) -> Iterator[tuple[list, dict, dict]]:
    """Each buffer of log items with its valid lines' token ids and logits, by line number."""
    if engine == "vllm":
        yield from _scored_by_vllm(directory, log, limits, python)
        return
    model = TransformersClassifier(directory, device)
    for buffer in _buffers(log, limits.batch_size * BUFFER_BATCHES):
        entries = [item for item in buffer if isinstance(item, LogEntry)]
        encoded = encode_entries(model.tokenizer, entries, limits.max_tokens)
        logits: dict[int, list[float]] = {}
        for lines in token_batches(encoded, limits):
            batch = model.logits_of_ids([encoded[line].ids for line in lines])
            logits.update(zip(lines, batch.tolist(), strict=True))
        yield buffer, encoded, logits


def _scored_by_vllm(directory: Path, log: Path, limits: ScoreOptions, python: str | None):
    """vLLM classifies the token ids (cut as for transformers), written to a scratch file, in one run; its logits
    stream back. Only the cut lines' counts are kept meanwhile, so memory does not grow with the log."""
    from transformers import AutoTokenizer

    python = vllm_python(python)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    size = limits.batch_size * BUFFER_BATCHES
    with tempfile.TemporaryDirectory(prefix="finsurg-monitor-") as scratch:
        texts = Path(scratch) / "texts.jsonl"
        valid, cut = 0, {}
        with open(texts, "w") as handle:
            for buffer in _buffers(log, size):
                entries = [item for item in buffer if isinstance(item, LogEntry)]
                for line, encoded in encode_entries(tokenizer, entries, limits.max_tokens).items():
                    handle.write(json.dumps(encoded.ids) + "\n")
                    valid += 1
                    if encoded.cut:
                        cut[line] = encoded.tokens
        if not valid:  # nothing for vLLM to do: the problems are reported without starting it
            yield from ((buffer, {}, {}) for buffer in _buffers(log, size))
            return
        request = {"model": str(directory.resolve()), "texts": str(texts), "batch_size": limits.batch_size * 8}
        reply = run_script(
            python, "vllm_classify.py", request, Path(scratch), f"vLLM on {directory}", TIMEOUT, ENGINE_ENV
        )
        with open(reply["logits"]) as logits:
            for buffer in _buffers(log, size):
                entries = [item for item in buffer if isinstance(item, LogEntry)]
                encoded = {
                    e.line: Encoded([], cut.get(e.line, 0), limits.max_tokens if e.line in cut else 0) for e in entries
                }
                yield buffer, encoded, {entry.line: json.loads(next(logits)) for entry in entries}
