"""The lm-eval tasks a pack is judged on: those its manifest names (its own `tasks/` and the shipped general
ones), or, for a pack that names none, a preference task written from its held-out pairs beside the shipped
general tasks."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from finsurg.packs import Pack
from finsurg.packs.pack import generic_dir

GENERAL_TASKS = {"finsurg_general": "acc", "finsurg_prose": "word_perplexity"}
GENERAL_TITLES = {"finsurg_general": "finsurg general knowledge", "finsurg_prose": "finsurg neutral prose"}
PREFERENCE_TASK = "finsurg_pack_preference"
PREFERENCE_YAML = f"""# Written by finsurg from the pack's held-out pairs: the positive answer (choice 0) against the negative one.
task: {PREFERENCE_TASK}
custom_dataset: !function utils.load_jsonl
dataset_kwargs:
  file: {PREFERENCE_TASK}.jsonl
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{[positive, negative]}}}}"
doc_to_target: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@dataclass(frozen=True)
class PackTasks:
    headlines: dict[str, str]  # task -> the metric that sums it up
    titles: dict[str, str]
    preference: str | None  # the task whose choices are (positive answer, negative answer)
    include_path: list[str]


def pack_tasks(pack: Pack, scratch: Path) -> PackTasks:
    """The pack's tasks; `scratch` receives a written preference task, for a pack that names no tasks."""
    shipped = [str(generic_dir() / "tasks")]
    manifest = pack.manifest
    if manifest.tasks:
        own = [str(pack.tasks_dir)] if pack.tasks_dir.is_dir() else []
        titles = GENERAL_TITLES | dict(manifest.task_titles)
        return PackTasks(dict(manifest.tasks), titles, manifest.preference_task, shipped + own)
    if pack.answers is None:
        return PackTasks(dict(GENERAL_TASKS), dict(GENERAL_TITLES), None, shipped)
    directory = scratch / "pack_tasks"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{PREFERENCE_TASK}.yaml").write_text(PREFERENCE_YAML)
    rows = [pair.model_dump() for pair in pack.answers.heldout]
    (directory / f"{PREFERENCE_TASK}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    shutil.copy(generic_dir() / "tasks" / "utils.py", directory / "utils.py")
    title = f"{pack.name} preference (held-out pairs)"
    return PackTasks(
        {PREFERENCE_TASK: "acc"} | GENERAL_TASKS,
        {PREFERENCE_TASK: title} | GENERAL_TITLES,
        PREFERENCE_TASK,
        shipped + [str(directory)],
    )
