"""Atomic file replacement, for every file the server or its tools write that a reader
must never see half of (routes, profiles, lineage, batch manifests and parts): a temp
file in the same directory, fsync, rename, and (``sync_dir``) fsync of the directory,
so a crash leaves the old file or the new one."""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write, sync_dir: bool = True) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, then put it in place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes, sync_dir: bool = True) -> None:
    atomic_write(path, lambda f: f.write(data), sync_dir)


def atomic_write_text(path: Path, text: str, sync_dir: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), sync_dir)


def remove_stale_temps(path: Path) -> int:
    """Delete the temp files that writers of ``path`` killed mid-write left beside it
    (atomic_write's names; a crash between mkstemp and rename leaves one each time);
    returns how many. Only for a caller that knows no writer of ``path`` runs (a server
    at start, before it writes its state)."""
    path = Path(path)
    removed = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            tmp.unlink()
            removed += 1
        except OSError:
            pass
    return removed
