"""Conversations as the monitor reads them: OpenAI-format chat logs, one `{"messages": [...]}` per line (with an
optional "time"), and the pack's labelled conversations. Each is scored as its messages rendered by the
tokenizer's chat template (`tokenize=False`), the text transformers' pipeline and vLLM's /classify are given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finsurg.errors import FinsurgError

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True)
class LogEntry:
    line: int
    messages: list[dict]
    time: float | None  # seconds since the epoch


@dataclass(frozen=True)
class Problem:
    line: int
    reason: str


def parse_time(value) -> float:
    """Seconds since the epoch, from a number or an ISO 8601 string."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'"time" must be a number or an ISO 8601 string, not {type(value).__name__}')
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise ValueError(f'"time" {value[:40]!r} is not ISO 8601') from None
    return float(value)


def parse(text: str, line: int) -> LogEntry:
    """One log line; ValueError says what is wrong with it."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError('no messages (expected {"messages": [{"role": ..., "content": ...}, ...]})')
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} is not an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"message {index} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {index} has no text content")
    time = parse_time(record["time"]) if record.get("time") is not None else None
    return LogEntry(line, [{"role": m["role"], "content": m["content"]} for m in messages], time)


def read_log(path: Path) -> Iterator[LogEntry | Problem]:
    """Each non-blank line of a chat log, as a LogEntry or the Problem that makes it unreadable."""
    if not path.is_file():
        raise FinsurgError(f"log not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield parse(text, number)
            except ValueError as exc:
                yield Problem(number, str(exc))


def render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def user_turn(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def exchange(question: str, reply: str) -> list[dict]:
    return user_turn(question) + [{"role": "assistant", "content": reply}]
