"""The frozen heap: what is alive at load leaves the collector's sight, and a
repository change lets go of cycles that died since (runtime/heap.py)."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from tensorgate.runtime import heap


class _Node:
    pass


def _cycle() -> _Node:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a


def test_freeze_then_change_frees_cycles_that_died_since():
    try:
        kept = _cycle()
        doomed = _cycle()
        ref = weakref.ref(doomed)
        heap.freeze()
        assert gc.get_freeze_count() > 0
        del doomed  # a model version's objects, unloaded later
        gc.collect()
        assert ref() is not None  # frozen: the collector no longer sees it
        asyncio.run(heap.HeapFreezer()("unloaded", "m"))
        assert ref() is None
        assert kept.other.other is kept
        asyncio.run(heap.HeapFreezer()("unloading", "m"))  # not a change: no work
    finally:
        gc.unfreeze()


def test_malloc_arena_cap_defers_to_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.limit_malloc_arenas() is False  # the operator's setting wins
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert heap.limit_malloc_arenas() is True


def _resident_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_malloc_trim_gives_freed_pages_back():
    """Pages freed in the middle of the heap stay resident until a trim releases them
    (glibc); the trimmer does that on its own thread and stops when asked."""
    trimmer = heap.MallocTrimmer(every_s=0.01)
    if trimmer._trim is None:
        pytest.skip("no malloc_trim here (not glibc)")
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB below mmap's threshold
    keep = blocks[-1]
    del blocks  # all but the last freed: a hole below a live block, not trimmed at the top
    before = _resident_kib()
    assert trimmer.start()
    deadline = time.monotonic() + 5
    while trimmer.passes < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    trimmer.stop()
    assert before - _resident_kib() > 100_000  # KiB: most of the 200 MB went back
    assert keep and not heap.MallocTrimmer(every_s=0).start()
