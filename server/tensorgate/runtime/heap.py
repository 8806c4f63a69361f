"""The server process's heap: the cyclic garbage collector and glibc malloc (its arenas,
and trimming freed pages).

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
import threading
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
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    if mallopt is None:  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_ARENA_MAX, arenas))


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


class MallocTrimmer:
    """Hands glibc's free pages back to the system every ``every_s`` seconds.

    Even with two arenas, a burst (many calls in flight at once, each with its grpc
    call arena, message buffers and tensors) leaves the heap larger, and glibc keeps
    freed pages inside it: a 5-minute soak at 7,100 req/s on the native front end grew
    in three steps of 1-2 MiB each, flat in between (+5.3%). ``malloc_trim(0)`` releases
    every free page of every arena, not only the top; it runs on its own thread (ctypes
    lets the GIL go), holding one arena lock at a time for the few milliseconds a pass
    takes.
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.passes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        libc = _libc()
        self._trim = getattr(libc, "malloc_trim", None) if libc is not None else None
        if self._trim is not None:
            self._trim.argtypes = (ctypes.c_size_t,)

    def start(self) -> bool:
        """False where there is no malloc_trim (not glibc)."""
        if self._trim is None or self.every_s <= 0:
            return False
        self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def trim(self) -> float:
        """One pass; returns its duration in seconds."""
        started = time.perf_counter()
        self._trim(0)
        return time.perf_counter() - started

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            took = self.trim()
            self.passes += 1
            log.debug("malloc_trim: %.1f ms", took * 1e3)


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
