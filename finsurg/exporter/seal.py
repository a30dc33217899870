"""The last step of every change to a variant directory: re-render its model card, then SHA256SUMS."""

from __future__ import annotations

from pathlib import Path

from finsurg.hashing import write_sums
from finsurg.hub_cards.card import write_card


def seal(directory: Path, known: dict[str, str] | None = None, repo_id: str | None = None) -> dict[str, str]:
    """Write README.md and SHA256SUMS; `known` supplies hashes of files that were not touched."""
    write_card(directory, repo_id)
    return write_sums(directory, known={k: v for k, v in (known or {}).items() if k != "README.md"})
