"""Synthetic chat logs from a pack's held-out conversations, with a planted shift in the share of replies that
do the positive behaviour: what `monitor drift` is demonstrated, benchmarked and tested on."""

from __future__ import annotations

import json
import random
from pathlib import Path

from finsurg.packs import Pack

START = 1_767_225_600  # 2026-01-01T00:00:00Z
STEP = 60  # seconds between conversations


def planted_log(
    path: Path, pack: Pack, lines: int, before: float, after: float, shift_at: float = 0.5, seed: int = 0
) -> Path:
    """`lines` conversations, one a minute: a positive-behaviour reply with probability `before` up to
    `shift_at` of the log and `after` from there; otherwise a negative-behaviour reply or an off-topic exchange."""
    rng = random.Random(seed)
    pairs = pack.answer_pairs().heldout
    off = pack.off_topic_splits().heldout
    with open(path, "w") as handle:
        for index in range(lines):
            share = before if index < shift_at * lines else after
            if rng.random() < share:
                pair = rng.choice(pairs)
                question, reply = pair.question, pair.positive
            elif rng.random() < 0.5:
                pair = rng.choice(pairs)
                question, reply = pair.question, pair.negative
            else:
                item = rng.choice(off)
                question, reply = item.question, item.reply
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
            handle.write(json.dumps({"time": START + STEP * index, "messages": messages}) + "\n")
    return path
