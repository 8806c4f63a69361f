"""The load loop of one worker process: closed loop (N requests always in flight) or
open loop (Poisson arrivals at a fixed rate), on one grpc.aio channel.

Why it costs the client little per request: the request bytes are serialized before
the run (payload.py) and sent through a unary call without serializers, so grpc takes
them as they are and hands back the response as bytes; nothing is parsed unless the
scenario asks to verify. Per request the loop does one await, two clock reads and one
histogram increment (~1 µs).

Timeline of a step, one clock (CLOCK_MONOTONIC, shared by every process on the host):
start_ns .. measure_ns is warm-up (sent, not recorded); measure_ns .. stop_ns is
measured; a request belongs to the window it is *sent* in. With a request quota the
measured part also ends once the quota has been sent. Requests in flight at the end
are awaited (bounded by ``drain_s``) and count where they were sent.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from bench.harness import histogram as hdr

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # Each channel its own connection, so several channels spread the load.
    ("grpc.use_local_subchannel_pool", 1),
)
# Open loop: the dispatcher never sleeps less than this. libuv timers have 1 ms
# resolution; a shorter sleep would spin and burn the core the server needs. Arrivals
# that fall due while asleep are sent together at wake-up, from an absolute schedule,
# so the mean rate holds and nothing drifts; the send lag is reported.
MIN_SLEEP_S = 0.001
PROGRESS_EVERY_S = 0.25
UNFINISHED = "UNFINISHED"  # still in flight when drain_s ran out
VERIFY_FAILED = "VERIFY_FAILED"


@dataclass(frozen=True)
class WorkerSpec:
    url: str
    payloads: tuple[bytes, ...]
    concurrency: int = 0  # closed loop when > 0
    rate: float = 0.0  # open loop (requests/s) when > 0
    requests: int | None = None  # measured-request quota for this worker
    warmup_s: float = 0.0
    duration_s: float = 5.0
    timeout_s: float | None = None  # per-request gRPC deadline
    headers: tuple[tuple[str, str], ...] = ()
    max_outstanding: int = 4096
    verify: bool = False
    seed: int = 0
    drain_s: float = 10.0
    first_payload: int = 0  # where this worker starts in the payload round robin


@dataclass
class WorkerResult:
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    histogram: bytes = b""  # encoded HDR histogram of latency, µs
    max_us: int = 0  # exact, beside the histogram's bucketed max
    elapsed_ns: int = 0  # measured window as this worker saw it
    cpu_s: float = 0.0  # user + system CPU of the whole process over the window
    wall_s: float = 0.0  # wall time of that CPU measurement
    sent: int = 0  # measured requests sent
    warmup_requests: int = 0
    skipped: int = 0  # open loop: arrivals not sent, max_outstanding reached
    lag: bytes = b""  # open loop: encoded histogram of send lag behind schedule, µs
    lag_max_us: int = 0
    response_bytes: int = 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: grpc's too
    return usage.ru_utime + usage.ru_stime


def open_channel(url: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(url, options=CHANNEL_OPTIONS)


def poisson_schedule(rate: float, start_ns: int, rng: np.random.Generator, chunk: int = 4096):
    """Absolute arrival times (ns) of a Poisson process: exponential gaps, summed.

    Absolute times, not sleeps: a late wake-up makes the next arrivals due at once
    instead of shifting every later one (which would drift the rate down).
    """
    mean_gap_ns = 1e9 / rate
    t = float(start_ns)
    while True:
        for gap in rng.exponential(mean_gap_ns, chunk):
            t += gap
            yield int(t)


class _Driver:
    def __init__(self, channel: grpc.aio.Channel, spec: WorkerSpec, start_ns: int) -> None:
        self.spec = spec
        self.call = channel.unary_unary(INFER_METHOD)  # no serializers: bytes in, bytes out
        self.metadata = spec.headers or None
        self.start_ns = start_ns
        self.measure_ns = start_ns + int(spec.warmup_s * 1e9)
        self.stop_ns = self.measure_ns + int(spec.duration_s * 1e9)
        self.quota = spec.requests
        self.result = WorkerResult()
        self.hist = hdr.new_histogram()
        self.lag_hist = hdr.new_histogram()
        self.errors: Counter = Counter()
        self.in_flight_measured = 0
        self.last_done_ns = 0
        self.next_payload = spec.first_payload
        self.cpu_at_measure: tuple[float, float] | None = None

    def _payload(self) -> bytes:
        payloads = self.spec.payloads
        self.next_payload += 1
        return payloads[self.next_payload % len(payloads)]

    def _claim(self, send_ns: int) -> bool | None:
        """Whether a request sent at ``send_ns`` is measured; None: send nothing more."""
        if send_ns >= self.stop_ns:
            return None
        if send_ns < self.measure_ns:
            return False
        if self.quota is not None:
            if self.result.sent >= self.quota:
                return None
        self.result.sent += 1
        return True

    async def _request(self, measured: bool) -> None:
        sent = time.monotonic_ns()
        if measured:
            self.in_flight_measured += 1
        status = None
        try:
            reply = await self.call(self._payload(), timeout=self.spec.timeout_s,
                                    metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        else:
            if self.spec.verify and not _looks_valid(reply):
                status = VERIFY_FAILED
        done = time.monotonic_ns()
        if not measured:
            self.result.warmup_requests += 1
            return
        self.in_flight_measured -= 1
        self.last_done_ns = max(self.last_done_ns, done)
        if status is None:
            self.result.ok += 1
            self.result.response_bytes += len(reply)
            us = hdr.record_ns(self.hist, done - sent)
            if us > self.result.max_us:
                self.result.max_us = us
        else:
            self.errors[status] += 1

    async def _closed_slot(self) -> None:
        while True:
            measured = self._claim(time.monotonic_ns())
            if measured is None:
                return
            await self._request(measured)

    async def _open_loop(self, tasks: set) -> int:
        """Dispatch arrivals until the window or quota ends; the end of arrivals (ns)."""
        spec = self.spec
        rng = np.random.default_rng(spec.seed)
        loop = asyncio.get_running_loop()
        for due in poisson_schedule(spec.rate, self.start_ns, rng):
            now = time.monotonic_ns()
            if due > now:
                await asyncio.sleep(max((due - now) / 1e9, MIN_SLEEP_S))
            measured = self._claim(due)
            if measured is None:
                return min(due, self.stop_ns)
            if len(tasks) >= spec.max_outstanding:
                if measured:
                    self.result.skipped += 1
                    self.result.sent -= 1
                continue
            if measured:
                lag_us = hdr.record_ns(self.lag_hist, max(time.monotonic_ns() - due, 0))
                self.result.lag_max_us = max(self.result.lag_max_us, lag_us)
            task = loop.create_task(self._request(measured))
            tasks.add(task)  # keep a reference until done (STYLE: no dropped tasks)
            task.add_done_callback(tasks.discard)
        raise AssertionError("unreachable: the schedule is endless")

    async def _mark_measure_start(self) -> None:
        await _sleep_until(self.measure_ns)
        self.cpu_at_measure = (_cpu_s(), time.monotonic())

    async def _report_progress(self, progress) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            progress(self.result.ok, sum(self.errors.values()), self.result.warmup_requests)

    async def run(self, progress=None) -> WorkerResult:
        spec = self.spec
        await _sleep_until(self.start_ns)
        helpers = [asyncio.create_task(self._mark_measure_start())]
        if progress is not None:
            helpers.append(asyncio.create_task(self._report_progress(progress)))
        tasks: set[asyncio.Task] = set()
        try:
            if spec.concurrency:
                for _ in range(spec.concurrency):
                    task = asyncio.create_task(self._closed_slot())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                arrivals_end = None
            else:
                arrivals_end = await self._open_loop(tasks)
            if tasks:
                # Closed loop: the slots end by themselves once the window closes, so
                # the wait covers the rest of the window too; open loop: only the drain.
                wait_s = spec.drain_s
                if arrivals_end is None:
                    wait_s += max(self.stop_ns - time.monotonic_ns(), 0) / 1e9
                await asyncio.wait(set(tasks), timeout=wait_s)
            unfinished = [t for t in tasks if not t.done()]
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        if self.in_flight_measured:
            self.errors[UNFINISHED] += self.in_flight_measured
        return self._finish(arrivals_end)

    def _finish(self, arrivals_end: int | None) -> WorkerResult:
        result = self.result
        end_ns = time.monotonic_ns()
        if self.cpu_at_measure is not None:
            cpu0, wall0 = self.cpu_at_measure
            result.cpu_s = _cpu_s() - cpu0
            result.wall_s = time.monotonic() - wall0
        # Open loop: the window is the arrivals' (so a server keeping up shows the offered
        # rate); closed loop: until the last measured answer.
        last = arrivals_end if arrivals_end is not None else (self.last_done_ns or end_ns)
        result.elapsed_ns = max(last - self.measure_ns, 1)
        result.errors = dict(self.errors)
        result.histogram = hdr.encode(self.hist)
        result.lag = hdr.encode(self.lag_hist) if self.lag_hist.get_total_count() else b""
        return result


async def _sleep_until(when_ns: int) -> None:
    # Timers round to the loop's millisecond clock and may fire a little early: sleep
    # again until the time has really come (a request sent "before the start" would
    # count as warm-up).
    while (now := time.monotonic_ns()) < when_ns:
        await asyncio.sleep((when_ns - now) / 1e9)


def _looks_valid(reply: bytes) -> bool:
    # Only with verify on: one protobuf parse per response, which the hot path avoids.
    from tensorgate._proto.inference import grpc_service_pb2 as pb

    try:
        response = pb.ModelInferResponse.FromString(reply)
    except Exception:
        return False
    raw = len(response.raw_output_contents)
    return bool(response.outputs) and raw in (0, len(response.outputs))


async def drive(channel: grpc.aio.Channel, spec: WorkerSpec, start_ns: int,
                progress=None) -> WorkerResult:
    """Run one step on ``channel`` from ``start_ns`` (time.monotonic_ns clock).

    ``progress(ok, errors, warmup_requests)`` is called every PROGRESS_EVERY_S.
    """
    if bool(spec.concurrency) == bool(spec.rate):
        raise ValueError("a worker step has either a concurrency or a rate")
    if not spec.payloads:
        raise ValueError("no payloads")
    return await _Driver(channel, spec, start_ns).run(progress)
