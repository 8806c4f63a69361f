"""The frozen heap: what is alive at load leaves the collector's sight, and a
repository change lets go of cycles that died since (runtime/heap.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref

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
