"""Offline loader for finsurg's lm-eval tasks: the JSONL beside this file, never the Hub."""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load_jsonl(file: str, **_metadata) -> datasets.DatasetDict:
    rows = [json.loads(line) for line in (HERE / file).read_text().splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
