"""Dynamic batching: requests from the event loop, batches on instance threads.

The native ``Scheduler`` holds the queue and decides when a batch is ready (Triton's
dynamic_batching semantics). Each model instance has one worker thread that blocks in
``next_batch()`` with the GIL released, gathers the batch's rows into one contiguous
buffer (native memcpy, GIL released), runs ONNX Runtime (GIL released), slices the
outputs back into per-request views and hands the whole batch back to the loop with one
``call_soon_threadsafe``. Statistics are updated on the loop thread only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tensorgate._ext.batcher import QueueFull, Scheduler, gather
from tensorgate.errors import DeadlineExceeded, ResourceExhausted, RuntimeFailure, Unavailable

log = logging.getLogger("tensorgate.batching")


@dataclass(eq=False)
class Pending:
    """One accepted request waiting for its rows to run."""

    inputs: dict[str, np.ndarray]
    rows: int
    shape_key: Any
    future: asyncio.Future
    enqueued_ns: int = 0
    span: Any = None  # the request's server span when it is traced (observability.tracing)
    # Filled by the worker: per-request timings (ns) of the batch that ran it.
    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    batch_rows: int = 0
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)
    error: Exception | None = None


@dataclass
class BatchTimings:
    """What one finished batch reports to the statistics, on the loop thread."""

    rows: int
    input_ns: int
    infer_ns: int
    output_ns: int
    # Variable-length batching: elements of the padded inputs, as sent and as run.
    real_elements: int = 0
    padded_elements: int = 0


Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class Batcher:
    """Queue + one worker thread per model instance for one model version."""

    def __init__(
        self,
        label: str,
        scheduler: Scheduler,
        runners: list[Runner],
        output_names: list[str],
        input_buffers: Callable[[Runner], dict[str, np.ndarray]],
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[list[Pending], BatchTimings], None],
        varlen=None,
    ) -> None:
        self._label = label
        self._scheduler = scheduler
        self._runners = runners
        self._output_names = output_names
        self._new_buffers = input_buffers
        self._loop = loop
        self._on_batch = on_batch
        self._threads: list[threading.Thread] = []
        self._varlen = varlen  # a batching.varlen.VarLenPlan: pad, run, slice back
        # A batch observer (drift monitoring: a VersionMonitor), or None; set and
        # cleared by its owner. On the worker thread: observer.gathered(batch, feed)
        # before a gathered batch runs, observer.tap(batch, feed, outputs, early) after
        # (see _work).
        self.observer = None

    def start(self) -> None:
        for i, runner in enumerate(self._runners):
            t = threading.Thread(
                target=self._work, args=(runner,), name=f"{self._label}#{i}", daemon=True
            )
            t.start()
            self._threads.append(t)

    @property
    def queued(self) -> int:
        return self._scheduler.size

    def flush(self) -> None:
        """Dispatch what is queued without waiting out the queue delay."""
        self._scheduler.flush()

    def note_early(self, rows: int, shape_key: Any, arrived: float) -> None:
        """Rows that ran at once, outside the queue, still count for their window."""
        self._scheduler.note_early(rows, shape_key, arrived)

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        rows: int,
        shape_key: Any,
        priority: int = 0,
        timeout_us: int = 0,
        deadline: float = 0.0,
        alone: bool = False,
        span: Any = None,
    ) -> Pending:
        """Queue a request and wait until its batch ran; raises the request's error.

        ``alone``: no other request is on its way to this queue, so waiting out the
        batching delay would only add latency.
        """
        future = self._loop.create_future()
        pending = Pending(inputs, rows, shape_key, future, time.perf_counter_ns(), span)
        try:
            self._scheduler.enqueue(
                pending, rows, shape_key, time.monotonic(), priority, timeout_us, deadline,
                alone,
            )
        except QueueFull:
            raise ResourceExhausted(
                f"model {self._label}: queue is full ({self._scheduler.size} requests waiting)"
            ) from None
        except RuntimeError:
            raise Unavailable(f"model {self._label} is unloading") from None
        try:
            await future
        except asyncio.CancelledError:
            self._scheduler.cancel(pending)  # the client went away: free its queue slot
            raise
        if pending.error is not None:
            raise pending.error
        return pending

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers after they finish what they hold; fail what is still queued."""
        self._scheduler.close()
        leftover = self._scheduler.drain()
        if leftover:
            self._loop.call_soon_threadsafe(
                self._fail, leftover, Unavailable(f"model {self._label} was unloaded")
            )
        for t in self._threads:
            t.join(timeout)

    # -- worker threads -------------------------------------------------------------

    def _work(self, runner: Runner) -> None:
        scheduler = self._scheduler
        buffers = self._new_buffers(runner)  # this instance's batch buffers, sized at load
        while True:
            got = scheduler.next_batch()
            if got is None:
                return
            batch, expired = got
            if expired:
                self._loop.call_soon_threadsafe(self._expire, expired)
            if batch:
                feed = values = early = None
                observer = self.observer  # one for the whole batch
                try:
                    timings, feed, values, early = self._execute(runner, batch, buffers, observer)
                except BaseException:  # never let a worker die silently
                    log.exception("model %s: batch execution failed", self._label)
                    for p in batch:
                        p.error = RuntimeFailure("internal error while executing the batch")
                    timings = BatchTimings(0, 0, 0, 0)
                if observer is None:
                    self._loop.call_soon_threadsafe(self._finish, batch, timings)
                    continue
                outputs = None if values is None else dict(zip(self._output_names, values))
                # The observer reads the batch after its answers went out: everything it
                # reads is the server's own (the runtime's outputs, requests' arrays, even
                # those from client shared memory, which are copies); a gathered batch's
                # inputs it read before the run, in _execute, while they were in cache.
                self._loop.call_soon_threadsafe(self._finish, batch, timings)
                self._observe(observer, batch, feed, outputs, early)

    def _observe(self, observer, batch, feed, outputs, early) -> None:
        try:
            observer.tap(batch, feed, outputs, early)
        except Exception:  # an observer must never stop the worker
            log.exception("model %s: batch observer failed", self._label)

    def _execute(
        self, runner: Runner, batch: list[Pending], buffers: dict[str, np.ndarray],
        observer
    ) -> tuple[BatchTimings, dict | None, list | None, object]:
        """Run the batch; (its timings, the feed and the runtime's outputs when it ran
        as one batch of unpadded rows, else None and None: per-request outputs only,
        and what ``observer.gathered`` made of the gathered feed, or None)."""
        started = time.perf_counter_ns()
        for p in batch:
            p.queue_ns = started - p.enqueued_ns
        varlen = self._varlen
        early = None
        real = padded = 0
        if len(batch) == 1:
            feed = batch[0].inputs
            if varlen is not None:
                real = padded = sum(feed[v.name].size for v in varlen.inputs)
        elif varlen is not None:
            feed, real, padded = varlen.gather(
                batch, lambda b, names: self._gather(b, buffers, names)
            )
        else:
            feed = self._gather(batch, buffers)
            if observer is not None:
                try:
                    early = observer.gathered(batch, feed)
                except Exception:  # an observer must never stop the worker
                    log.exception("model %s: batch observer failed", self._label)
        total = sum(p.rows for p in batch)
        t_input = time.perf_counter_ns()
        try:
            values = runner(feed)
        except Exception as exc:  # onnxruntime's own exception types
            if len(batch) > 1:
                # One bad request must not fail its batch mates: run each on its own.
                for p in batch:
                    self._execute_alone(runner, p)
                t_done = time.perf_counter_ns()
                timings = BatchTimings(total, t_input - started, t_done - t_input, 0)
                return timings, None, None, None
            batch[0].error = RuntimeFailure(f"onnxruntime failed: {exc}")
            t_done = time.perf_counter_ns()
            timings = BatchTimings(total, t_input - started, t_done - t_input, 0)
            return timings, None, None, None
        t_infer = time.perf_counter_ns()
        names = self._output_names
        if len(batch) == 1:
            batch[0].outputs = dict(zip(names, values))
        elif varlen is not None:
            varlen.scatter(batch, names, values)
        else:
            start = 0
            for p in batch:
                end = start + p.rows
                p.outputs = {n: v[start:end] for n, v in zip(names, values)}
                start = end
        t_out = time.perf_counter_ns()
        timings = BatchTimings(total, t_input - started, t_infer - t_input, t_out - t_infer,
                               real, padded)
        if varlen is not None and len(batch) > 1:
            return timings, None, None, None  # padded rows: each request's own
        return timings, feed, values, early

    def _execute_alone(self, runner: Runner, p: Pending) -> None:
        try:
            p.outputs = dict(zip(self._output_names, runner(p.inputs)))
        except Exception as exc:
            p.error = RuntimeFailure(f"onnxruntime failed: {exc}")

    @staticmethod
    def _gather(
        batch: list[Pending], buffers: dict[str, np.ndarray], names=None
    ) -> dict[str, np.ndarray]:
        """The batch's rows of each input (``names``: only these) in one buffer each."""
        total = sum(p.rows for p in batch)
        feed = {}
        for name in names if names is not None else batch[0].inputs:
            first = batch[0].inputs[name]
            parts = [p.inputs[name] for p in batch]
            if first.dtype == object:
                feed[name] = np.concatenate(parts)  # BYTES: references, not bytes to copy
                continue
            buf = buffers.get(name)
            if buf is None or buf.shape[1:] != first.shape[1:] or buf.shape[0] < total:
                buf = np.empty((total,) + first.shape[1:], dtype=first.dtype)
                buffers[name] = buf  # keep the grown/reshaped buffer for the next batch
            gather([np.ascontiguousarray(a) for a in parts], buf)
            feed[name] = buf[:total]
        return feed

    # -- back on the event loop ---------------------------------------------------------

    def _finish(self, batch: list[Pending], timings: BatchTimings) -> None:
        for p in batch:
            p.batch_rows = timings.rows
            p.input_ns, p.infer_ns, p.output_ns = (
                timings.input_ns, timings.infer_ns, timings.output_ns
            )
        self._on_batch(batch, timings)
        for p in batch:
            if not p.future.done():
                p.future.set_result(None)

    def _expire(self, expired: list) -> None:
        for p, reason in expired:
            if reason == "deadline":
                err = DeadlineExceeded(
                    f"model {self._label}: the request's deadline passed while it was queued"
                )
            else:
                err = DeadlineExceeded(
                    f"model {self._label}: the request's queue timeout passed before it ran"
                )
            self._fail([p], err)

    @staticmethod
    def _fail(items: list[Pending], err: Exception) -> None:
        for p in items:
            p.error = err
            if not p.future.done():
                p.future.set_result(None)
