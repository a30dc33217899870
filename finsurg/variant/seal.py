"""The last step of every change to a variant directory: re-render its model card, then SHA256SUMS."""

from __future__ import annotations

from pathlib import Path

from finsurg.io.hashing import write_sums
from finsurg.jsonfile import write_json
from finsurg.variant.card import write_card
from finsurg.variant.directory import REPORT_FILES
from finsurg.variant.record import CARD_NAME, Record


def seal(directory: Path, known: dict[str, str] | None = None, repo_id: str | None = None) -> dict[str, str]:
    """Write README.md and SHA256SUMS; `known` supplies hashes of files that were not touched."""
    write_card(directory, repo_id)
    return write_sums(directory, known={k: v for k, v in (known or {}).items() if k != CARD_NAME})


def write_report(directory: Path, report: Record, known: dict[str, str] | None = None) -> dict[str, str]:
    """Store a check's report in the variant (its file name comes from its type) and re-seal it."""
    name = REPORT_FILES[type(report)]
    write_json(directory / name, report.model_dump(mode="json"))
    return seal(directory, known={k: v for k, v in (known or {}).items() if k != name})
