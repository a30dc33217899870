"""SHA256 of files, and the SHA256SUMS file that seals a variant directory."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from finsurg.errors import FinsurgError

CHUNK = 16 * 1024 * 1024
SUMS_NAME = "SHA256SUMS"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> list[str]:
    """Hashes of many files, one per core at a time (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        return list(pool.map(sha256_file, paths))


def sealed_files(directory: Path) -> list[str]:
    """Every regular file below directory, relative and sorted, except SHA256SUMS itself."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and p.name != SUMS_NAME)


def write_sums(directory: Path, known: dict[str, str] | None = None) -> dict[str, str]:
    """Write SHA256SUMS for directory; `known` supplies hashes already computed while writing."""
    known = known or {}
    sums = {name: known.get(name) or sha256_file(directory / name) for name in sealed_files(directory)}
    text = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    (directory / SUMS_NAME).write_text(text)
    return sums


def read_sums(directory: Path) -> dict[str, str]:
    path = directory / SUMS_NAME
    if not path.is_file():
        raise FinsurgError(f"{directory} has no {SUMS_NAME}; it was not written by finsurg export")
    sums = {}
    for line in path.read_text().splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise FinsurgError(f"{path} is malformed at line: {line[:80]!r}")
        sums[name] = digest
    return sums


def check_sums(directory: Path) -> dict[str, str]:
    """Re-hash every file and compare with SHA256SUMS; return the verified sums or raise."""
    expected = read_sums(directory)
    present = sealed_files(directory)
    extra = sorted(set(present) - set(expected))
    missing = sorted(set(expected) - set(present))
    if missing:
        raise FinsurgError(f"checksum failure in {directory}: missing {', '.join(missing)}")
    if extra:
        raise FinsurgError(f"checksum failure in {directory}: unlisted {', '.join(extra)}")
    actual = dict(zip(expected, sha256_files([directory / name for name in expected])))
    for name, digest in expected.items():
        if actual[name] != digest:
            raise FinsurgError(f"checksum failure in {directory}: {name} does not match SHA256SUMS")
    return expected
