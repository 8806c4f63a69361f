"""Online drift: per-version monitors, fed by a data-plane observer, on one thread.

The event loop pays, per request to a version with a profile: one attribute read, a
``random()`` when sampling below 1, one ``len`` and one ``deque.append`` of references
to the request's validated inputs and its outputs (no copy, no numpy). A full queue
(``QUEUE_CAPACITY`` requests) drops the sample and counts it. Versions without a profile
carry ``drift_monitor = None``; when no serving version has a profile the observer is
not on ``DataPlane.observers`` at all, so nothing is paid.

A background thread (``tensorgate-drift``) wakes every ``POLL_S`` (at once while a quarter
of the queue is still waiting), takes what is queued,
turns each version's share into feature matrices (features.py: one numpy pass per
tensor per wake-up) and adds them to the version's current window. A window closes
after ``window_rows`` rows or ``window_secs`` seconds, whichever comes first (a window
closed by time with fewer than ``MIN_WINDOW_ROWS`` rows is extended instead: PSI over
a handful of rows is noise). Windows follow one another without overlap; on closing,
PSI (every feature) and KS (numeric features; at most ``KS_VALUES`` of the window's
values) against the version's profile are computed, and the result replaces the version's ``last`` window, read by /metrics and
by rollout guards.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import threading
import time

import numpy as np

from tensorgate.observability.drift import stats
from tensorgate.observability.drift.features import CATEGORY, extractors, rows_first
from tensorgate.observability.drift.profile import PROFILE, ProfileError, Reference, read

log = logging.getLogger("tensorgate.drift")

QUEUE_CAPACITY = 1024  # sampled requests waiting for the thread (references only)
POLL_S = 0.02
MIN_WINDOW_ROWS = 100
# KS compares at most this many of a window's values (every k-th) with the profile's
# sample (1,000 by default): its resolution is the reference sample's anyway.
KS_VALUES = 2000
_random = random.random
_monotonic = time.monotonic
_thread_time = time.thread_time


class Window:
    """A closed window of one version (immutable once published)."""

    __slots__ = ("ended", "rows", "psi", "ks", "score", "worst", "outputs")

    def __init__(self, ended, rows, psi, ks, outputs) -> None:
        self.ended = ended  # time.monotonic() when it closed
        self.rows = rows
        self.psi = psi  # feature -> PSI against the profile
        self.ks = ks  # numeric feature -> KS statistic against the profile's sample
        finite = {k: v for k, v in psi.items() if not math.isnan(v)}
        self.worst = max(finite, key=finite.get) if finite else ""
        self.score = finite[self.worst] if finite else 0.0  # the largest PSI
        self.outputs = outputs  # output feature -> this window's values (prediction drift)


class VersionMonitor:
    """One version's windows against its profile. ``add`` and ``tick`` run on the
    drift thread only; ``dropped`` is counted on the event loop."""

    def __init__(self, model, refs: list[Reference], window_secs: float, window_rows: int,
                 mtime: float = 0.0) -> None:
        self.name = model.name
        self.version = model.version_str
        self.label = model.label
        self.mtime = mtime  # the profile file's, to notice a new one on reload
        self.batched = model.max_batch_size > 0
        self.window_secs = window_secs
        self.window_rows = window_rows
        self.min_rows = min(MIN_WINDOW_ROWS, window_rows)
        self.refs = {r.feature.name: r for r in refs}
        cats = {r.feature.tensor: r.categories for r in refs if r.feature.kind == CATEGORY}
        self.extractors = extractors([r.feature for r in refs], cats)
        self._first = next((e.tensor for e in self.extractors if e.source == "input"), None)
        self.rows_total = 0  # rows added to windows
        self.dropped = 0  # sampled requests dropped: the queue was full
        self.cpu_seconds = 0.0  # the drift thread's CPU time spent on this version
        self.windows = 0
        self.last: Window | None = None
        self._parts: list[list[np.ndarray]] = [[] for _ in self.extractors]
        self._rows = 0
        self._opened = _monotonic()

    @property
    def features(self) -> list[str]:
        return list(self.refs)

    def add(self, items: list, now: float) -> None:
        """Sampled requests, each (inputs, outputs, ...) by name, into the current
        window; a window that fills up closes at the request that filled it."""
        first = self._first
        if not self.batched or first is None:
            counts = [1] * len(items)
        else:
            try:
                counts = [len(item[0][first]) for item in items]
            except KeyError:  # an optional first input left out: one row
                counts = [len(item[0][first]) if first in item[0] else 1 for item in items]
        start, filled = 0, self._rows
        for j, rows in enumerate(counts):
            filled += rows
            if filled >= self.window_rows:
                self._add(items[start:j + 1], filled - self._rows, now)
                self.close(now)
                start, filled = j + 1, 0
        if start < len(items):
            self._add(items[start:], filled - self._rows, now)

    def _add(self, items: list, rows: int, now: float) -> None:
        for ex, parts in zip(self.extractors, self._parts):
            key, tensor = (0 if ex.source == "input" else 1), ex.tensor
            try:
                arrays = [item[key][tensor] for item in items]
            except KeyError:  # an optional input some requests left out
                arrays = [item[key][tensor] for item in items if tensor in item[key]]
            if not self.batched:
                arrays = [rows_first(a, False) for a in arrays]
            if arrays:
                parts.append(ex.matrix(arrays))
        if not self._rows:  # a window opens with its first rows
            self._opened = now
        self._rows += rows
        self.rows_total += rows

    def tick(self, now: float) -> Window | None:
        """Close the window when it is full or old enough; the closed one, or None."""
        if self._rows >= self.window_rows or (
            now - self._opened >= self.window_secs and self._rows >= self.min_rows
        ):
            return self.close(now)
        return None

    def close(self, now: float) -> Window:
        psi, ks, outputs = {}, {}, {}
        for ex, parts in zip(self.extractors, self._parts):
            if not parts:
                continue
            matrix = np.concatenate(parts) if len(parts) > 1 else parts[0]
            for j, f in enumerate(ex.features):
                ref = self.refs[f.name]
                column = matrix[:, j]
                if f.kind == CATEGORY:
                    counts = stats.code_counts(column, len(ref.fractions))
                else:
                    counts = stats.bin_counts(ref.edges, column)
                    step = -(-len(column) // KS_VALUES)  # every step-th value
                    ks[f.name] = stats.ks(ref.sample, column[::step])
                psi[f.name] = stats.psi(ref.fractions, stats.fractions(counts),
                                        expected_rows=ref.rows, actual_rows=len(column))
                if ex.source == "output":
                    outputs[f.name] = column
        window = Window(now, self._rows, psi, ks, outputs)
        self._parts = [[] for _ in self.extractors]
        self._rows = 0
        self._opened = now
        self.windows += 1
        self.last = window  # one assignment: readers on other threads see old or new
        return window


def prediction_drift(stable: VersionMonitor, stable_window: Window,
                     candidate_window: Window) -> tuple[float, str]:
    """(largest PSI, its feature) of the candidate's output features against the
    stable's in their last windows, both binned on the stable's profile edges; (0, "")
    when they share no output feature."""
    worst, name = 0.0, ""
    for feature, values in candidate_window.outputs.items():
        mine = stable_window.outputs.get(feature)
        ref = stable.refs.get(feature)
        if mine is None or ref is None or not len(mine) or not len(values):
            continue
        if ref.feature.kind == CATEGORY:
            size = len(ref.fractions)
            expected = stats.code_counts(mine, size)
            actual = stats.code_counts(values, size)
        else:
            expected = stats.bin_counts(ref.edges, mine)
            actual = stats.bin_counts(ref.edges, values)
        value = stats.psi(stats.fractions(expected), stats.fractions(actual),
                          expected_rows=len(mine), actual_rows=len(values))
        if value > worst:
            worst, name = value, feature
    return worst, name


class DriftMonitor:
    """The data-plane observer and repository listener that runs drift monitoring.

    ``observers``: the data plane's list; this object is on it exactly while some
    serving version has a profile."""

    def __init__(self, repository, observers: list, window_secs: float, window_rows: int,
                 sample_ratio: float = 1.0, capacity: int = QUEUE_CAPACITY) -> None:
        self._repository = repository
        self._observers = observers
        self.window_secs = window_secs
        self.window_rows = window_rows
        self.ratio = sample_ratio
        self.capacity = capacity
        self.monitors: dict[int, VersionMonitor] = {}  # id(model) -> monitor
        self._models: dict[int, object] = {}
        self._queue: collections.deque = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the event loop's side: one call per request that reached a version ----------

    def observe(self, outcome) -> None:
        monitor = getattr(outcome.model, "drift_monitor", None)
        if monitor is None or outcome.outputs is None:
            return
        if self.ratio < 1.0 and _random() >= self.ratio:
            return
        if len(self._queue) >= self.capacity:
            monitor.dropped += 1
            return
        self._queue.append((outcome.arrays, outcome.outputs, monitor))

    # -- repository changes (a listener: awaited on the loop) -------------------------

    async def __call__(self, event: str, name: str, **fields) -> None:
        serving = {id(m): m for m in self._repository.models()}
        for key in [k for k in self.monitors if k not in serving]:
            self._drop(key)
        if event == "loaded":
            for model in self._repository.versions_of(name):
                await self._attach(model)
        self._register()

    async def _attach(self, model) -> None:
        """Read the version's profile when it has one (new or changed since read)."""
        current = self.monitors.get(id(model))
        try:
            found = await asyncio.to_thread(self._find_profile, model)
        except Exception as exc:  # a path the repository refuses
            log.warning("drift: %s: no monitoring (%s)", model.label,
                        getattr(exc, "message", exc))
            found = None
        if found is None:
            if current is not None:
                self._drop(id(model))
                log.info("drift: %s: its profile is gone; monitoring stopped", model.label)
            model.drift_monitor = None
            return
        path, mtime = found
        if current is not None and current.mtime == mtime:
            return
        try:
            monitor = await asyncio.to_thread(self._load, model, path, mtime)
        except ProfileError as exc:
            log.warning("drift: %s: profile not used: %s", model.label, exc)
            if current is None:
                model.drift_monitor = None
            return
        if id(model) not in {id(m) for m in self._repository.versions_of(model.name)}:
            return  # unloaded meanwhile
        self.monitors[id(model)] = monitor
        self._models[id(model)] = model
        model.drift_monitor = monitor
        log.info("drift: monitoring %s against %s (%d features; windows of %g s or %d "
                 "rows; sample ratio %g)", model.label, path, len(monitor.refs),
                 self.window_secs, self.window_rows, self.ratio,
                 extra={"event": "drift", "model": model.name, "version": model.version_str})

    def _find_profile(self, model):
        paths = self._repository.paths
        path = paths.model_files(paths.model_dir(model.name)).file(
            str(model.version), PROFILE, what="drift profile")
        try:
            return path, path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _load(self, model, path, mtime) -> VersionMonitor:
        header, refs = read(path)
        known = {("input", n): s for n, s in model.inputs.items()}
        known.update({("output", n): s for n, s in model.outputs.items()})
        usable = []
        for ref in refs:
            spec = known.get((ref.feature.source, ref.feature.tensor))
            if spec is None:
                raise ProfileError(f"{path}: feature {ref.feature.name}: {model.label} has "
                                   f"no {ref.feature.source} '{ref.feature.tensor}'")
            if (spec.dtype.wire == "BYTES") != (ref.feature.kind in ("bytes_length", CATEGORY)):
                raise ProfileError(f"{path}: feature {ref.feature.name} does not fit "
                                   f"{ref.feature.tensor}'s datatype {spec.dtype.wire}")
            usable.append(ref)
        if not usable:
            raise ProfileError(f"{path}: no features")
        return VersionMonitor(model, usable, self.window_secs, self.window_rows, mtime)

    def _drop(self, key: int) -> None:
        self.monitors.pop(key, None)
        model = self._models.pop(key, None)
        if model is not None:
            model.drift_monitor = None

    def _register(self) -> None:
        on = self in self._observers
        if self.monitors and not on:
            self._observers.append(self)
            self._start()
        elif not self.monitors and on:
            self._observers.remove(self)

    # -- the thread -------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tensorgate-drift",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        queue = self._queue
        failed: set = set()
        while not self._stop.is_set():
            pop = queue.popleft
            items = [pop() for _ in range(len(queue))]  # (inputs, outputs, monitor)
            groups: list = []
            if items:
                one = items[0][2]
                if all(item[2] is one for item in items):  # one monitored version: usual
                    groups.append((one, items))
                else:
                    by_monitor: dict[int, tuple] = {}
                    for item in items:
                        by_monitor.setdefault(id(item[2]), (item[2], []))[1].append(item)
                    groups = list(by_monitor.values())
            for monitor, items in groups:
                started = _thread_time()
                try:
                    monitor.add(items, _monotonic())
                except Exception:  # a request shaped unlike the profile: say so once
                    if monitor.label not in failed:
                        failed.add(monitor.label)
                        log.exception("drift: %s: could not summarise requests", monitor.label)
                monitor.cpu_seconds += _thread_time() - started
            now = _monotonic()
            for monitor in list(self.monitors.values()):
                started = _thread_time()
                try:
                    window = monitor.tick(now)
                except Exception:
                    log.exception("drift: %s: window failed", monitor.label)
                    continue
                finally:
                    monitor.cpu_seconds += _thread_time() - started
                if window is not None and log.isEnabledFor(logging.DEBUG):
                    log.debug("drift: %s: window of %d rows, score %.4f (%s)",
                              monitor.label, window.rows, window.score, window.worst)
            if len(queue) < self.capacity // 4:  # else it fell behind: no pause
                self._stop.wait(POLL_S)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._queue.clear()
