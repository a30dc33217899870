"""Copy an unchanged shard into a variant: a reflink where the filesystem allows, else an in-kernel copy.

A reflink (FICLONE: XFS, btrfs, bcachefs, APFS-like CoW filesystems) shares the data blocks
copy-on-write, so it costs no time or space and a later write to either file never reaches the
other. Hard links are never used: a write through one would change the base model. The SHA256 of
the source is computed once, on another thread while the copy runs, and serves every variant.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

from finsurg.io.hashing import cached_sha256  # hashlib releases the GIL on large blocks: it runs beside the copy

FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h
COPY_STEP = 64 * 1024 * 1024
NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


class SourceHashes:
    """SHA256 of each source file, computed at most once (and not at all where the hash cache knows it), in the
    background."""

    def __init__(self) -> None:
        self._done: dict[str, str] = {}
        self._running: dict[str, tuple[threading.Thread, list[str]]] = {}

    def start(self, path: Path) -> None:
        key = str(path)
        if key in self._done or key in self._running:
            return
        box: list[str] = []
        thread = threading.Thread(target=lambda: box.append(cached_sha256(path)), daemon=True)
        thread.start()
        self._running[key] = (thread, box)

    def get(self, path: Path) -> str:
        key = str(path)
        if key not in self._done:
            self.start(path)
            thread, box = self._running.pop(key)
            thread.join()
            if not box:
                raise OSError(f"could not hash {path}")
            self._done[key] = box[0]
        return self._done[key]


def reflinks(src: Path, directory: Path) -> bool:
    """Whether files can be reflinked from src's filesystem into directory (tried on src, then undone)."""
    probe = directory / ".finsurg-reflink-probe"
    reader = os.open(src, os.O_RDONLY)
    try:
        writer = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            fcntl.ioctl(writer, FICLONE, reader)
            return True
        except OSError:
            return False
        finally:
            os.close(writer)
            probe.unlink(missing_ok=True)
    finally:
        os.close(reader)


def copy_shard(src: Path, dst: Path, link: str, on_bytes: Callable[[int], None] = lambda n: None) -> str:
    """Copy src to dst (a new file); return how: 'reflink' or 'copy'."""
    size = src.stat().st_size
    reader = os.open(src, os.O_RDONLY)
    try:
        writer = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            if link == "auto" and _reflink(reader, writer):
                on_bytes(size)
                return "reflink"
            _copy_range(reader, writer, size, on_bytes)
        finally:
            os.close(writer)
    finally:
        os.close(reader)
    return "copy"


def _reflink(src_fd: int, dst_fd: int) -> bool:
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        if exc.errno in NO_REFLINK:
            return False
        raise
    return True


def _copy_range(reader: int, writer: int, size: int, on_bytes: Callable[[int], None]) -> None:
    """copy_file_range moves the bytes inside the kernel; read/write where it is unavailable.

    Both paths advance the same file offsets, so the second finishes whatever the first began.
    """
    left = size
    try:
        while left:
            moved = os.copy_file_range(reader, writer, min(COPY_STEP, left))
            if moved == 0:
                break
            left -= moved
            on_bytes(moved)
    except OSError as exc:
        if exc.errno not in NO_REFLINK:
            raise
    while left and (block := os.read(reader, min(COPY_STEP, left))):
        view = memoryview(block)
        while view:
            view = view[os.write(writer, view) :]
        left -= len(block)
        on_bytes(len(block))
    if left:
        raise OSError(f"source ended {left} bytes early")
