"""Heap inspection for long runs: ``GET /v2/debug/heap`` on the metrics port.

Off unless the server starts with ``TENSORGATE_HEAP_DEBUG=1`` in its environment: then
:func:`install` starts ``tracemalloc`` (``TENSORGATE_HEAP_DEBUG_FRAMES`` frames per
allocation site, 1 by default, at most 5: 25 frames cost too much under load) and wraps
the metrics server's WSGI app so that one more path answers. Without the variable
nothing here runs: the path is 404 like every path but /metrics, tracemalloc stays off.

The answer is JSON (bench/soak.py --heap reads it)::

    tracemalloc  {current_bytes, peak_bytes, frames}
    top_sites    [{site, size_bytes, count}]          largest live allocation sites
    gc           {tracked, frozen, by_type: {type: count}}  top 30 types, frozen included
    malloc       glibc mallinfo2 (arena, in-use and free bytes, mmap), or null

Query: ``top=N`` (sites and types listed, default 30); ``mark=1`` keeps this moment's
snapshot and type counts as the baseline (e.g. at the end of a soak's warm-up);
``diff=1`` adds ``growth_sites`` and ``growth_types``, the largest changes since the
mark (``marked``: false when there is none).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import json
import os
import threading
import tracemalloc
from urllib.parse import parse_qs

ENV = "TENSORGATE_HEAP_DEBUG"
FRAMES_ENV = "TENSORGATE_HEAP_DEBUG_FRAMES"
PATH = "/v2/debug/heap"
MAX_FRAMES = 5
DEFAULT_TOP = 30


def enabled(environ=os.environ) -> bool:
    return environ.get(ENV, "") == "1"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]


def mallinfo2() -> dict | None:
    """glibc's counters (bytes): arena = heap from sbrk, hblkhd = mmapped blocks,
    uordblks = in use, fordblks = free but kept; None off glibc or before 2.33."""
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {name: int(getattr(info, name)) for name, _ in _Mallinfo2._fields_}


def _type_counts() -> collections.Counter:
    # gc.get_objects() skips the permanent (frozen) generation, where --gc-freeze puts
    # everything alive after each repository change: a leak there would be invisible.
    # So frozen objects are unfrozen for the count and frozen again; that also freezes
    # the young objects of the moment, as the server's own re-freeze after a repository
    # change does (a debug-only perturbation, twice per soak).
    frozen = gc.get_freeze_count()
    if frozen:
        gc.unfreeze()
    try:
        return collections.Counter(type(o).__name__ for o in gc.get_objects())
    finally:
        if frozen:
            gc.freeze()


def _site(stat) -> str:
    frame = stat.traceback[0]
    return f"{frame.filename}:{frame.lineno}"


class HeapDebug:
    """The endpoint's state: the marked snapshot and type counts."""

    def __init__(self, frames: int = 1) -> None:
        self.frames = max(1, min(MAX_FRAMES, frames))
        self._lock = threading.Lock()
        self._mark: tracemalloc.Snapshot | None = None
        self._mark_types: collections.Counter | None = None
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)

    def report(self, query: dict[str, list[str]]) -> dict:
        top = int(query.get("top", [DEFAULT_TOP])[0])
        with self._lock:  # one snapshot at a time: each walks every traced block
            snapshot = tracemalloc.take_snapshot().filter_traces(
                (tracemalloc.Filter(False, tracemalloc.__file__),
                 tracemalloc.Filter(False, __file__)))  # the marked type counts
            types = _type_counts()
            current, peak = tracemalloc.get_traced_memory()
            out = {
                "tracemalloc": {"current_bytes": current, "peak_bytes": peak,
                                "frames": self.frames},
                "top_sites": [{"site": _site(s), "size_bytes": s.size, "count": s.count}
                              for s in snapshot.statistics("lineno")[:top]],
                "gc": {"tracked": sum(types.values()), "frozen": gc.get_freeze_count(),
                       "by_type": dict(types.most_common(top))},
                "malloc": mallinfo2(),
            }
            if query.get("diff", ["0"])[0] == "1":
                out["marked"] = self._mark is not None
                if self._mark is not None and self._mark_types is not None:
                    stats = snapshot.compare_to(self._mark, "lineno")
                    out["growth_sites"] = [
                        {"site": _site(s), "size_diff_bytes": s.size_diff,
                         "count_diff": s.count_diff, "size_bytes": s.size}
                        for s in stats[:top]]
                    delta = collections.Counter(types)
                    delta.subtract(self._mark_types)
                    out["growth_types"] = dict(
                        sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top])
            if query.get("mark", ["0"])[0] == "1":
                self._mark, self._mark_types = snapshot, types
                out["marked"] = True
        return out

    def wrap(self, app):
        """A WSGI app answering PATH itself and everything else through ``app``."""

        def heap_app(environ, start_response):
            if environ.get("PATH_INFO") != PATH:
                return app(environ, start_response)
            if environ.get("REQUEST_METHOD", "GET") != "GET":
                status, body = "405 Method Not Allowed", b'{"error": "GET only"}'
            else:
                try:
                    report = self.report(parse_qs(environ.get("QUERY_STRING", "")))
                    status, body = "200 OK", json.dumps(report).encode()
                except ValueError:
                    status, body = "400 Bad Request", b'{"error": "top must be an integer"}'
            start_response(status, [("Content-Type", "application/json"),
                                    ("Content-Length", str(len(body)))])
            return [body]

        return heap_app


def install(metrics_server) -> HeapDebug:
    """Start tracemalloc and answer PATH on ``metrics_server`` (a wsgiref server)."""
    debug = HeapDebug(int(os.environ.get(FRAMES_ENV, "1") or 1))
    metrics_server.set_app(debug.wrap(metrics_server.get_app()))
    return debug
