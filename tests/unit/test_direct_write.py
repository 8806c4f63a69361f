"""direct_write: whole files written from reused mappings past the page cache
(O_DIRECT), with the exact bytes and length whatever the length; the usual write where
the file system refuses O_DIRECT."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tensorgate.observability.direct_write import ALIGN, DirectWriter

SIZES = (0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 3 * ALIGN + 17)


def _write(out: DirectWriter, path: Path, data: bytes) -> None:
    mapped = out.mapping(len(data) or 1)
    mapped[:len(data)] = data
    out.write_file(path, mapped, len(data))
    out.release(mapped)


@pytest.mark.parametrize("size", SIZES)
def test_files_hold_exactly_the_bytes(tmp_path, size):
    data = os.urandom(size)
    _write(DirectWriter(), tmp_path / "f", data)
    assert (tmp_path / "f").read_bytes() == data


def test_mappings_are_reused_and_o_direct_kept(tmp_path):
    out = DirectWriter(spare=1)
    first = out.mapping(10_000)
    assert len(first) % ALIGN == 0 and len(first) >= 10_000
    first[:5] = b"stale"
    out.write_file(tmp_path / "a", first, 3)
    out.release(first)
    again = out.mapping(5_000)
    assert again is first  # reused, not mapped anew
    again[:2] = b"ok"
    out.write_file(tmp_path / "b", again, 2)
    assert (tmp_path / "a").read_bytes() == b"sta" and (tmp_path / "b").read_bytes() == b"ok"
    if _takes_direct(tmp_path):
        assert out.direct  # nothing was refused


def test_a_file_system_without_o_direct_gets_buffered_writes():
    shm = Path("/dev/shm")
    if not shm.is_dir() or _takes_direct(shm):
        pytest.skip("no file system here that refuses O_DIRECT")
    out = DirectWriter()
    path = shm / f"tensorgate-direct-write-{os.getpid()}"
    try:
        _write(out, path, b"z" * 7000)
        assert path.read_bytes() == b"z" * 7000 and not out.direct
    finally:
        path.unlink(missing_ok=True)


def _takes_direct(folder: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / f".o-direct-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
