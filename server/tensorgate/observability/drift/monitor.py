"""Online drift: per-version monitors, fed by the batch path, on one thread.

What a request costs depends on how its version ran it, never numpy on the event loop:

- a batch on an instance's worker thread (the usual way under load): the worker hands
  the batch to the version's monitor (``Batcher.observer``), which summarises its rows where
  they lie (the gathered batch buffer, the runtime's outputs: features.py, one pass per
  row over large tensors with the GIL released) and queues the small feature matrices;
  the event loop pays nothing per request;
- inline on the event loop (an idle model, see ModelVersion.run): one attribute read,
  a ``random()`` when sampling below 1, one ``len`` and one ``deque.append`` of
  references to the inputs and outputs, summarised later on the drift thread;
- an ensemble (no batcher of its own): the same references, from the data plane's
  observer list (``observe``), on which this object is only while such a version has a
  profile.

A full queue (``QUEUE_CAPACITY`` entries) drops the sample and counts it. Versions
without a profile carry ``drift_monitor = None`` and no tap, so nothing is paid.

A background thread (``tensorgate-drift``) wakes every ``POLL_S`` (at once while a quarter
of the queue is still waiting), takes what is queued, summarises the references (one
numpy pass per tensor per wake-up) and adds rows to each version's current window. A
window closes after ``window_rows`` rows (at the request or batch that filled it) or
``window_secs`` seconds, whichever comes first (a window closed by time with fewer than
``MIN_WINDOW_ROWS`` rows is extended instead: PSI over a handful of rows is noise).
Windows follow one another without overlap; on closing, PSI (every feature) and KS
(numeric features; at most ``KS_VALUES`` of the window's values) against the version's
profile are computed, and the result replaces the version's ``last`` window, read by
/metrics and by rollout guards.
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


# Queue entries: (monitor, REFERENCES, inputs by name, outputs by name) to summarise on
# the drift thread, or (monitor, MATRICES, [matrix or None per extractor], rows).
REFERENCES, MATRICES = 0, 1


class VersionMonitor:
    """One version's windows against its profile. ``add``, ``add_matrices``,
    ``tick`` and ``close`` run on the drift thread only; ``inline`` on the event loop,
    ``tap`` on the version's worker threads."""

    def __init__(self, model, refs: list[Reference], window_secs: float, window_rows: int,
                 mtime: float = 0.0, queue: collections.deque | None = None,
                 capacity: int = QUEUE_CAPACITY, ratio: float = 1.0) -> None:
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
        self.queue = collections.deque() if queue is None else queue  # the drift thread's
        self.capacity = capacity
        self.ratio = ratio
        self._rng = np.random.default_rng()
        # A version without a batcher of its own (an ensemble) is fed per request by
        # the data plane's observer; every other through its batcher and run().
        self.per_request = getattr(model, "batcher", None) is None

    # -- feeding: the event loop (inline runs) and the worker threads (batches) -------

    def inline(self, inputs: dict, outputs: dict) -> None:
        """A request the event loop ran itself: references, for the drift thread."""
        if self.ratio < 1.0 and _random() >= self.ratio:
            return
        if len(self.queue) >= self.capacity:
            self.dropped += 1
            return
        # Read after the answer went out: inputs from a client's shared memory are the
        # server's own copies (pread), which the client's next use cannot change.
        self.queue.append((self, REFERENCES, inputs, outputs))

    def gathered(self, batch: list, feed: dict):
        """Before a gathered batch runs (Batcher, worker thread): its inputs' summaries,
        for ``tap`` to queue with the outputs'. Read here, not after the run, because
        the rows are still in the core's cache: a convnet's run pushes its 48 KB input
        rows out, and reading them again from memory cost about 1 us a row. None when
        the queue is full (``tap`` counts the drop)."""
        started = _thread_time()
        if len(self.queue) >= self.capacity:
            return None
        picked = self._pick(batch)
        early = (picked, self._summarise(picked, feed, None, "input"))
        self.cpu_seconds += _thread_time() - started
        return early

    def tap(self, batch: list, feed: dict | None, outputs: dict | None,
            early=None) -> None:
        """A batch that ran on a worker thread (Batcher.observer): summarised here, on that
        thread, while its rows are at hand; the matrices queued for the drift thread.
        ``feed``/``outputs``: the batch's inputs and outputs as run, or None where only
        each request's own are meaningful (padded or failed batches); ``early``: what
        ``gathered`` returned for it, the inputs' part done."""
        started = _thread_time()
        queue = self.queue
        if len(queue) >= self.capacity:
            self.dropped += len(batch)
            return
        if feed is None or outputs is None:
            items = [(p.inputs, p.outputs) for p in batch
                     if p.outputs is not None and (self.ratio >= 1.0 or _random() < self.ratio)]
            if items:
                queue.append((self, MATRICES, self._matrices(items),
                              sum(self._row_counts(items))))
            self.cpu_seconds += _thread_time() - started
            return
        if early is None:
            picked = self._pick(batch)
            matrices = self._summarise(picked, feed, outputs, None)
        else:
            picked, matrices = early
            for i, matrix in enumerate(self._summarise(picked, None, outputs, "output")):
                if matrix is not None:
                    matrices[i] = matrix
        if picked[0]:
            queue.append((self, MATRICES, matrices, picked[0]))
        self.cpu_seconds += _thread_time() - started

    def _pick(self, batch: list) -> tuple:
        """(rows, keep) of a batch that ran as one: how many rows the sample takes, and
        which (None: all); rows 0 when it takes none."""
        rows = sum([p.rows for p in batch]) if self.batched else 1
        keep = None
        if self.ratio < 1.0:
            if self.batched:
                keep = np.flatnonzero(self._rng.random(rows) < self.ratio)
                rows = len(keep)
            elif _random() >= self.ratio:
                rows = 0
        return rows, keep

    def _summarise(self, picked: tuple, feed: dict | None, outputs: dict | None,
                   source: str | None) -> list:
        """A matrix (or None) per extractor of the picked rows of a batch's ``feed``
        and ``outputs``; ``source``: only the extractors of "input" or "output"."""
        rows, keep = picked
        matrices = []
        for ex in self.extractors:
            if not rows or (source is not None and ex.source != source):
                matrices.append(None)
                continue
            array = (feed if ex.source == "input" else outputs).get(ex.tensor)
            if array is None:  # an optional input the batch left out
                matrices.append(None)
                continue
            if not self.batched:
                array = rows_first(array, False)
            elif keep is not None:
                array = array[keep]
            matrices.append(ex.matrix([array]))
        return matrices

    @property
    def features(self) -> list[str]:
        return list(self.refs)

    def add(self, items: list, now: float) -> None:
        """Sampled requests, each (inputs, outputs, ...) by name, into the current
        window; a window that fills up closes at the request that filled it."""
        start, filled = 0, self._rows
        for j, rows in enumerate(self._row_counts(items)):
            filled += rows
            if filled >= self.window_rows:
                self._add(items[start:j + 1], filled - self._rows, now)
                self.close(now)
                start, filled = j + 1, 0
        if start < len(items):
            self._add(items[start:], filled - self._rows, now)

    def add_matrices(self, matrices: list, rows: int, now: float) -> None:
        """A batch summarised on its worker thread; a window that fills up closes at
        the batch that filled it."""
        self._append(matrices, rows, now)
        if self._rows >= self.window_rows:
            self.close(now)

    def _row_counts(self, items: list) -> list[int]:
        """The rows of each request (inputs, outputs): its first monitored input's batch
        dimension, or one (a model without batching, an optional input left out)."""
        first = self._first
        if not self.batched or first is None:
            return [1] * len(items)
        try:
            return [len(item[0][first]) for item in items]
        except KeyError:  # an optional first input left out: one row
            return [len(item[0][first]) if first in item[0] else 1 for item in items]

    def _matrices(self, items: list) -> list:
        """A matrix (or None) per extractor of requests' (inputs, outputs)."""
        matrices = []
        for ex in self.extractors:
            key, tensor = (0 if ex.source == "input" else 1), ex.tensor
            try:
                arrays = [item[key][tensor] for item in items]
            except KeyError:  # an optional input some requests left out
                arrays = [item[key][tensor] for item in items if tensor in item[key]]
            if not self.batched:
                arrays = [rows_first(a, False) for a in arrays]
            matrices.append(ex.matrix(arrays) if arrays else None)
        return matrices

    def _add(self, items: list, rows: int, now: float) -> None:
        self._append(self._matrices(items), rows, now)

    def _append(self, matrices: list, rows: int, now: float) -> None:
        for parts, matrix in zip(self._parts, matrices):
            if matrix is not None:
                parts.append(matrix)
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
        """Requests to versions without a batcher (ensembles); the others are fed by
        their batcher's tap and their inline runs."""
        monitor = getattr(outcome.model, "drift_monitor", None)
        if monitor is None or outcome.outputs is None or not monitor.per_request:
            return
        monitor.inline(outcome.arrays, outcome.outputs)  # its sampling, its queue's bound

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
        old = self.monitors.get(id(model))
        self.monitors[id(model)] = monitor
        self._models[id(model)] = model
        model.drift_monitor = monitor
        if not monitor.per_request:
            model.batcher.observer = monitor
        if old is not None:
            old.queue = collections.deque()  # what the old one still queues goes nowhere
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
        return VersionMonitor(model, usable, self.window_secs, self.window_rows, mtime,
                              self._queue, self.capacity, self.ratio)

    def _drop(self, key: int) -> None:
        self.monitors.pop(key, None)
        model = self._models.pop(key, None)
        if model is not None:
            model.drift_monitor = None
            if getattr(model, "batcher", None) is not None:
                model.batcher.observer = None

    def _register(self) -> None:
        if self.monitors:
            self._start()
        wanted = any(m.per_request for m in self.monitors.values())
        on = self in self._observers
        if wanted and not on:
            self._observers.append(self)
        elif not wanted and on:
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
            entries = [pop() for _ in range(len(queue))]
            # References are summarised a version's share at a time (one numpy pass per
            # tensor), matrices added as they come; both in arrival order per version.
            groups: dict[int, tuple] = {}
            for entry in entries:
                monitor = entry[0]
                group = groups.get(id(monitor))
                if group is None:
                    group = groups[id(monitor)] = (monitor, [])
                group[1].append(entry)
            for monitor, group in groups.values():
                started = _thread_time()
                try:
                    references = []
                    for _, kind, a, b in group:
                        if kind == REFERENCES:
                            references.append((a, b))
                            continue
                        if references:
                            monitor.add(references, _monotonic())
                            references = []
                        monitor.add_matrices(a, b, _monotonic())
                    if references:
                        monitor.add(references, _monotonic())
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
