"""SHA256 of files, a cache of the hashes of input files, and the SHA256SUMS file that seals a variant directory.

The cache (FINSURG_HOME/hashes.sqlite) keys a file's hash by its resolved path, size, mtime_ns, ctime_ns,
inode and device: any write, rename over or in-place change moves one of them, and the file is hashed
again. It serves inputs (a base model read again by a second export); SHA256SUMS checks always re-hash.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, suppress
from pathlib import Path

from finsurg.errors import FinsurgError
from finsurg.io.home import finsurg_home

CHUNK = 16 * 1024 * 1024
SUMS_NAME = "SHA256SUMS"
CACHE_NAME = "hashes.sqlite"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path], hasher=sha256_file) -> list[str]:
    """Hashes of many files, one per core at a time (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        return list(pool.map(hasher, paths))


def _key(path: Path) -> tuple:
    info = os.stat(path)
    return (str(path.resolve()), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_dev)


def _cache() -> sqlite3.Connection | None:
    """The hash cache, or None where it cannot be opened (a read-only home): then every file is hashed."""
    try:
        folder = finsurg_home()
        folder.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(folder / CACHE_NAME, timeout=30)
        connection.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, "
            "inode INTEGER, device INTEGER, sha256 TEXT, PRIMARY KEY (path, size, mtime_ns, ctime_ns, inode, device))"
        )
        return connection
    except (OSError, sqlite3.Error):
        return None


def cached_sha256(path: Path) -> str:
    """sha256_file, answered from the cache when the file's key is unchanged since it was last hashed."""
    key = _key(path)
    connection = _cache()
    if connection is None:
        return sha256_file(path)
    with closing(connection):
        found = connection.execute(
            "SELECT sha256 FROM hashes WHERE path=? AND size=? AND mtime_ns=? AND ctime_ns=? AND inode=? AND device=?",
            key,
        ).fetchone()
        if found:
            return found[0]
        digest = sha256_file(path)
        if _key(path) == key:  # unchanged while it was read
            with suppress(sqlite3.Error), connection:
                connection.execute("DELETE FROM hashes WHERE path=?", key[:1])
                connection.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, digest))
        return digest


def cached_sha256s(paths: list[Path]) -> list[str]:
    return sha256_files(paths, cached_sha256)


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
