"""The server process's heap: the cyclic garbage collector and glibc malloc's arenas.

Once the models are loaded the process holds hundreds of thousands of objects that live
as long as it does: ONNX Runtime's bindings, numpy, protobuf descriptors, grpc, the
compiled configs. Requests allocate many short-lived objects, so the collector runs
often, and every full collection walks that whole heap while the event loop waits: a
latency spike every few seconds for every request in flight. ``gc.freeze()`` moves the
objects alive now out of the collector's sight; young garbage is still collected as
before.

Measured on the 2-core reference machine, tiny MLP, perf_analyzer at concurrency 64,
four alternating pairs of runs (bench/results/2026-11-23-gc-freeze/): median p99 20.5 ms
frozen against 24.4 ms not, every frozen run's p99 below every unfrozen one's; the
throughput is the same (medians 4,697 and 4,706 infer/s).

A frozen object is never collected, even when it later becomes cyclic garbage, so the
repository's changes thaw the heap, collect, and freeze again (``HeapFreezer``): an
unloaded model version's cycles are freed, not kept for the process's lifetime.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time

log = logging.getLogger("tensorgate.runtime")

_CHANGES = {"loaded", "load_failed", "unloaded"}

# glibc's mallopt parameter number for the arena limit (malloc.h).
_M_ARENA_MAX = -8
SERVER_ARENAS = 2


def limit_malloc_arenas(arenas: int = SERVER_ARENAS) -> bool:
    """Cap glibc malloc's arenas before the server's threads start allocating.

    glibc gives threads that allocate at once their own arenas (up to 8 per core), and
    each arena keeps its high-water mark. A server's threads (the event loop, grpc
    core's, the batch workers) each allocate message buffers and tensors, so every
    transient backlog under load raised resident memory for good, one arena at a time:
    3-minute soaks at 80% of capacity grew +19% and +11% in steps, then flat, against
    +4.2% with two arenas (bench/results/2026-11-23-soak/). A MALLOC_ARENA_MAX set in
    the environment wins. Returns whether the cap was applied (glibc only).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_ARENA_MAX, arenas))


def freeze() -> None:
    """Collect what is garbage now, then freeze everything still alive."""
    started = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug("heap frozen: %d objects in %.1f ms", gc.get_freeze_count(),
              (time.perf_counter() - started) * 1e3)


class HeapFreezer:
    """A ModelRepository listener that freezes the heap again after each change."""

    async def __call__(self, event: str, name: str, **fields) -> None:
        if event in _CHANGES:
            freeze()
