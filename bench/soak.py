"""Soak: a fixed rate for N minutes; errors, and the trend of the server's memory.

    python bench/soak.py --minutes 10                        # 80% of capacity, gRPC
    python bench/soak.py --minutes 60 --routes --trace-ratio 0.01 --stream --heap
    python bench/soak.py --minutes 60 --protocol http --routes --trace-ratio 0.01
    python bench/soak.py --minutes 30 --churn 5 --heap       # load/unload under load
    python bench/soak.py --minutes 1 --rate 500              # beside other work

Starts ``tensorgate serve`` on the bundled demo repository (simple_mlp, batch 1) on free
ports, measures capacity with a closed loop over the same protocol mix (unless --rate
gives the rate), then sends an open-loop (fixed-rate) load at ``--load`` x capacity from
one client process: gRPC ModelInfer, HTTP ``POST /v2/models/M/infer`` (JSON, aiohttp)
or both, half the rate each (--protocol). Beside it, optionally: one ModelStreamInfer
stream kept open for the whole run (--stream), a second model loaded and unloaded every
--churn seconds through the repository API (the server in explicit model control), a
route splitting traffic 50/50 over two versions of simple_mlp (--routes: a copy of the
demo repository with a version 2), and tracing at a sampled ratio (--trace-ratio: spans
go to the console exporter, i.e. are built, written to the server's stdout and dropped).

Memory: server RSS is sampled from /proc every second. Two slopes through the samples
after the warm-up (the first 20% of the run, at least 10 s), in MiB/h and %/h: a
least-squares line (in %/h of its value at the end of the warm-up, with its 95%
interval) and Siegel's repeated-median slope through per-minute medians (in %/h of
the median), which transient bursts (under half the run) do not move; the verdict is the second's (the first's for runs
under five minutes). First/last/peak are printed beside them. --heap starts the server with
TENSORGATE_HEAP_DEBUG=1 and reads its /v2/debug/heap (tensorgate.observability.
heap_debug) at the end of the warm-up and at the end: the allocation sites (tracemalloc)
and object types (gc) that grew in between. tracemalloc's own bookkeeping (tens of
bytes per live block) and its cost per allocation are in the RSS and the rate of such a
run: judge the slope on a run without --heap, place growth with one.

Exit status 1 if any request, stream message or load/unload failed, the server exited
with an error, or the memory slope is at or above --max-slope-pct-per-hour (judged only
with at least a minute of samples after the warm-up). --json-out writes every number.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_REPOSITORY = ROOT / "server" / "tensorgate" / "demo_repository"
MODEL = "simple_mlp"
ROUTE = "soak_ab"
CHURN_MODEL = "multi_io"
READY_RE = re.compile(
    r"ready grpc=([\d.]+):(\d+) http=(?:([\d.]+):(\d+)|off) metrics=([\d.]+):(\d+)")
# A call grpc core sheds before the server's event loop accepts it (its backlog of
# unaccepted calls is full: the server is past capacity at that moment, e.g. on a
# shared machine) ends CANCELLED within milliseconds; reported apart from errors the
# server's code answered (README, the Errors table).
SHED_WITHIN_S = 0.05
SHED = "SHED_BY_GRPC_CORE"
# Requests the generator keeps in flight at most. A Python client sharing two cores
# with the server can fall behind its own schedule; it would then send what it owes in
# bursts and hold ever more calls, until it alone ran the machine out of memory (two
# soaks against the native front end ended so, the server's RSS flat). Requests that
# find this many in flight are not sent and counted as NOT_SENT apart from errors.
MAX_IN_FLIGHT = 2000
NOT_SENT = "NOT_SENT"
TIMEOUT_S = 10.0
# HTTP/1.1 connections the client keeps; the open loop's HTTP requests are sent by as
# many workers taking them from a queue, not a task each (a task per request, waiting
# for a free connection, cost the client enough CPU to fall 16% behind at 80% of the
# closed loop's rate).
HTTP_CONNECTIONS = 64
T95 = 1.96
MIN_JUDGED_S = 60.0  # fewer seconds of samples after the warm-up: memory not judged


# --- memory trend -----------------------------------------------------------------------

def warmup_seconds(seconds: float) -> float:
    """The first 20% of the run, at least 10 s, but never more than half of it."""
    return min(max(10.0, seconds * 0.2), seconds / 2)


def rss_trend(samples: list[tuple[float, int]], warm: float) -> dict:
    """Least-squares line through the (seconds, KiB) samples taken at or after ``warm``.

    Returns MiB/h and %/h (of the line's value at ``warm``) with half-widths of their
    95% intervals (1.96 standard errors of the slope), and first/last/peak MiB after
    the warm-up. The interval assumes independent residuals; RSS samples a second apart
    are strongly autocorrelated (malloc trimming, arenas, step-like growth), so the true
    interval is wider than this one: read it as a lower bound on the uncertainty.
    """
    pts = [(t, kib / 1024) for t, kib in samples if t >= warm]
    out: dict = {"samples": len(pts), "warmup_s": warm}
    if not pts:
        return out
    mib = [m for _, m in pts]
    out.update(first_mib=mib[0], last_mib=mib[-1], peak_mib=max(mib),
               growth_pct=(mib[-1] - mib[0]) / mib[0] * 100,
               span_s=pts[-1][0] - pts[0][0])
    if len(pts) < 3:
        return out
    t = np.array([p[0] for p in pts], dtype=np.float64)
    y = np.array(mib, dtype=np.float64)
    tm = t.mean()
    sxx = float(((t - tm) ** 2).sum())
    if sxx == 0:
        return out
    slope = float(((t - tm) * (y - y.mean())).sum() / sxx)  # MiB/s
    intercept = float(y.mean() - slope * tm)
    resid = y - (intercept + slope * t)
    se = math.sqrt(float((resid ** 2).sum()) / (len(pts) - 2) / sxx)
    base = intercept + slope * warm
    out.update(
        fit_base_mib=base,
        slope_mib_per_h=slope * 3600, ci95_mib_per_h=T95 * se * 3600,
        slope_pct_per_h=slope * 3600 / base * 100, ci95_pct_per_h=T95 * se * 3600 / base * 100,
    )
    robust = robust_slope_per_hour(t, y)
    if robust is not None:
        level = float(np.median(y))
        out.update(robust_slope_mib_per_h=robust, robust_slope_pct_per_h=robust / level * 100)
    return out


ROBUST_BIN_S = 60.0  # the robust slope is fitted through per-minute medians
ROBUST_MIN_BINS = 5


def robust_slope_per_hour(t: np.ndarray, y: np.ndarray) -> float | None:
    """A robust slope through the per-minute medians of (seconds, MiB), in MiB/h;
    None with fewer than ROBUST_MIN_BINS minutes.

    Why beside least squares: a transient (a burst the load generator sends after
    falling behind, a queue that fills and drains) lifts RSS by tens of MiB for a few
    minutes and then glibc gives it back; least squares reads that as a trend of tens of
    MiB/h (either sign, by where in the run it fell), while a leak moves every minute's
    median, which this slope follows and a burst does not."""
    edges = np.arange(t[0], t[-1] + ROBUST_BIN_S, ROBUST_BIN_S)
    centres, medians = [], []
    for lo in edges:
        inside = (t >= lo) & (t < lo + ROBUST_BIN_S)
        if inside.sum() >= 3:
            centres.append(lo + ROBUST_BIN_S / 2)
            medians.append(float(np.median(y[inside])))
    if len(medians) < ROBUST_MIN_BINS:
        return None
    x, m = np.array(centres), np.array(medians)
    # Siegel's repeated median (the median over minutes of each minute's median slope
    # to all others): it holds while fewer than half the minutes are disturbed, where
    # Theil-Sen's median of all pairwise slopes gives way at 29%.
    dx = x[None, :] - x[:, None]
    np.fill_diagonal(dx, np.nan)
    slopes = (m[None, :] - m[:, None]) / dx
    return float(np.median(np.nanmedian(slopes, axis=1))) * 3600


def judge_memory(trend: dict, max_pct_per_hour: float) -> str:
    """PASS / FAIL by the robust slope (least squares' where the run is too short for
    it), or NOT_JUDGED for short runs."""
    if "slope_pct_per_h" not in trend or trend.get("span_s", 0) < MIN_JUDGED_S:
        return "NOT_JUDGED"
    slope = trend.get("robust_slope_pct_per_h", trend["slope_pct_per_h"])
    return "PASS" if slope < max_pct_per_hour else "FAIL"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- the clients ------------------------------------------------------------------------

def request_bytes(model: str = MODEL) -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return req.SerializeToString()


def http_body() -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                                   "data": [1.0] * 16}]}).encode()


class Failed(Exception):
    """A request that failed, with the name it is counted under."""

    def __init__(self, name: str, details: str = "") -> None:
        super().__init__(name)
        self.name, self.details = name, details


class Clients:
    """One gRPC channel and/or one aiohttp session; ``send(i)`` sends the i-th request
    (alternating between the two with --protocol mixed) and raises Failed."""

    def __init__(self, protocol: str, grpc_url: str, http_url: str, model: str) -> None:
        self.protocol, self.grpc_url, self.http_url, self.model = (
            protocol, grpc_url, http_url, model)
        self.sent: collections.Counter = collections.Counter()

    async def __aenter__(self) -> Clients:
        self.senders = []
        if self.protocol in ("grpc", "mixed"):
            import grpc

            self.channel = grpc.aio.insecure_channel(self.grpc_url)
            call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            body = request_bytes(self.model)

            async def grpc_send():
                started = time.monotonic()
                try:
                    await call(body, timeout=TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    name = exc.code().name
                    if (exc.code() == grpc.StatusCode.CANCELLED
                            and time.monotonic() - started < SHED_WITHIN_S):
                        name = SHED
                    raise Failed(name, exc.details() or "") from None

            self.senders.append(("grpc", grpc_send))
        if self.protocol in ("http", "mixed"):
            import aiohttp

            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=HTTP_CONNECTIONS),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
            url = f"http://{self.http_url}/v2/models/{self.model}/infer"
            payload = http_body()
            headers = {"Content-Type": "application/json"}

            async def http_send():
                try:
                    async with self.session.post(url, data=payload, headers=headers) as resp:
                        text = await resp.read()
                        if resp.status != 200:
                            raise Failed(f"HTTP_{resp.status}", text[:120].decode(errors="replace"))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    raise Failed(f"HTTP_{type(exc).__name__}", str(exc)[:120]) from None

            self.senders.append(("http", http_send))
        return self

    async def __aexit__(self, *exc) -> None:
        if hasattr(self, "session"):
            await self.session.close()
        if hasattr(self, "channel"):
            await self.channel.close()

    def kind(self, i: int) -> str:
        return self.senders[i % len(self.senders)][0]

    async def send(self, i: int) -> None:
        kind, sender = self.senders[i % len(self.senders)]
        self.sent[kind] += 1
        await sender()


async def capacity(clients: Clients, seconds: float, concurrency: int) -> float:
    """Closed loop: ``concurrency`` workers, each sending its next request as soon as
    the last one answered (workers alternate protocols with --protocol mixed)."""
    done = 0
    stop = time.monotonic() + seconds

    async def worker(k: int):
        nonlocal done
        while time.monotonic() < stop:
            await clients.send(k)
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done / (time.monotonic() - t0)


async def open_loop(clients: Clients, rate: float, seconds: float,
                    failures: list | None = None):
    """Fixed-rate load; (ok count, errors by name, with NOT_SENT for requests the
    generator could not start in time). ``failures``: also collect (time offset,
    name, details)."""
    errors: collections.Counter = collections.Counter()
    ok = 0
    pending: set = set()

    async def one(i: int):
        nonlocal ok
        started = time.monotonic()
        try:
            await clients.send(i)
            ok += 1
        except Failed as exc:
            errors[exc.name] += 1
            if failures is not None:
                failures.append((round(started - t0, 3), exc.name, exc.details[:120]))

    async def http_worker():
        while (i := await queue.get()) is not None:
            await one(i)

    queue: asyncio.Queue = asyncio.Queue()
    workers = ([asyncio.create_task(http_worker()) for _ in range(HTTP_CONNECTIONS)]
               if any(kind == "http" for kind, _ in clients.senders) else [])
    t0 = time.monotonic()
    sent = 0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        due = int((now - t0) * rate)
        if sent < due and len(pending) + queue.qsize() >= MAX_IN_FLIGHT:
            errors[NOT_SENT] += due - sent
            sent = due
        while sent < due:
            if workers and clients.kind(sent) == "http":
                queue.put_nowait(sent)
            else:
                task = asyncio.create_task(one(sent))
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(0.001)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*pending, *workers)
    return ok, errors


async def sample_rss(pid: int, samples: list, stop: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - t0, rss_kib(pid)))
        try:
            await asyncio.wait_for(stop.wait(), 1.0 - (time.monotonic() - t0) % 1.0)
        except asyncio.TimeoutError:
            pass


async def keep_stream(url: str, model: str, rate: float, stop: asyncio.Event) -> dict:
    """One ModelStreamInfer stream open until ``stop``, ``rate`` requests/s on it;
    counts sent, answered and failed messages (and the stream's own end status)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    counts = {"sent": 0, "answered": 0, "errors": 0, "stream_status": "OK"}
    body = request_bytes(model)

    async def requests():
        t0 = time.monotonic()
        while not stop.is_set():
            counts["sent"] += 1
            yield body
            await asyncio.sleep(max(0.0, t0 + counts["sent"] / rate - time.monotonic()))

    async with grpc.aio.insecure_channel(url) as ch:
        call = ch.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                response_deserializer=pb.ModelStreamInferResponse.FromString)
        try:
            async for msg in call(requests()):
                if msg.error_message:
                    counts["errors"] += 1
                else:
                    counts["answered"] += 1
        except grpc.aio.AioRpcError as exc:
            counts["stream_status"] = exc.code().name
    counts["lost"] = counts["sent"] - counts["answered"] - counts["errors"]
    return counts


async def churn(url: str, model: str, period: float, stop: asyncio.Event) -> dict:
    """Load ``model``, wait ``period``, unload it, wait ``period``, until ``stop``;
    counts the calls and their failures by status."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    counts: dict = {"loads": 0, "unloads": 0, "failures": collections.Counter()}
    async with grpc.aio.insecure_channel(url) as ch:
        load = ch.unary_unary("/inference.GRPCInferenceService/RepositoryModelLoad")
        unload = ch.unary_unary("/inference.GRPCInferenceService/RepositoryModelUnload")
        loaded = False
        while not stop.is_set():
            call, req, key = ((unload, pb.RepositoryModelUnloadRequest(model_name=model),
                               "unloads") if loaded else
                              (load, pb.RepositoryModelLoadRequest(model_name=model), "loads"))
            try:
                await call(req.SerializeToString(), timeout=60)
                counts[key] += 1
            except grpc.aio.AioRpcError as exc:
                counts["failures"][f"{key[:-1]}:{exc.code().name}"] += 1
            loaded = not loaded
            try:
                await asyncio.wait_for(stop.wait(), period)
            except asyncio.TimeoutError:
                pass
    counts["failures"] = dict(counts["failures"])
    return counts


# --- the server -------------------------------------------------------------------------

def heap_snapshot(metrics: str, query: str) -> dict:
    with urllib.request.urlopen(f"{metrics}/v2/debug/heap?{query}", timeout=120) as resp:
        return json.loads(resp.read())


# Counters read from the server's /metrics at the end, by name less the prefix: grpc
# core's transport (TransportCollector; with the native front end it counts only the
# RPCs it relays), the native front end's own, the route's per-variant requests and
# failures (--routes), and model load/unload events (--churn).
SERVER_COUNTERS = {"tensorgate_grpc_calls_": "grpc:", "tensorgate_native_": "native:",
                   "tensorgate_route_requests_total": "route_requests",
                   "tensorgate_route_failures_total": "route_failures",
                   "tensorgate_model_events_total": "model_events"}


def server_counters(metrics: str) -> dict[str, float]:
    """The counters of SERVER_COUNTERS from the server's /metrics."""
    text = urllib.request.urlopen(f"{metrics}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for prefix, short in SERVER_COUNTERS.items():
            if line.startswith(prefix):
                name, value = line.rsplit(None, 1)
                out[short + name[len(prefix):]] = float(value)
    return out


def two_version_repository(into: Path) -> Path:
    """A copy of the demo repository where simple_mlp has versions 1 and 2 (the same
    graph), both served, so a route can split over them."""
    repo = into / "repository"
    shutil.copytree(DEMO_REPOSITORY, repo, ignore=shutil.ignore_patterns("README.md"))
    shutil.copytree(repo / MODEL / "1", repo / MODEL / "2")
    config = repo / MODEL / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy: { all: {} }\n")
    return repo


def _die_with_parent() -> None:
    """In the server's child process before exec: SIGTERM it when this tool dies, so a
    soak killed outright (a timeout's SIGKILL) leaves no server behind (Linux
    prctl(PR_SET_PDEATHSIG); elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """``tensorgate serve`` as a subprocess on free ports; its output is drained by a
    thread, the last lines kept for a failure message."""

    def __init__(self, args, tmp: Path) -> None:
        cmd = [sys.executable, "-m", "tensorgate", "serve", "--grpc-port", "0",
               "--http-port", "0" if args.protocol != "grpc" else "-1", "--metrics-port", "0"]
        if args.routes:
            cmd += ["--model-repository", str(two_version_repository(tmp))]
        if args.churn:
            cmd += ["--model-control-mode", "explicit", "--load-model", MODEL]
        if args.trace_ratio > 0:
            cmd += ["--trace-exporter", "console", "--trace-sample-ratio", str(args.trace_ratio)]
        env = dict(os.environ)
        if args.heap:
            env["TENSORGATE_HEAP_DEBUG"] = "1"
        self.proc = subprocess.Popen([*cmd, *args.serve_arg], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env,
                                     preexec_fn=_die_with_parent)
        self.tail: collections.deque = collections.deque(maxlen=50)
        self.grpc = self.http = self.metrics = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line)
            m = READY_RE.search(line)
            if m:
                self.grpc = f"{m.group(1)}:{m.group(2)}"
                self.http = f"{m.group(3)}:{m.group(4)}" if m.group(4) else ""
                self.metrics = f"http://{m.group(5)}:{m.group(6)}"
                break
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail.append(line)

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def set_route(grpc_url: str) -> None:
    subprocess.run([sys.executable, "-m", "tensorgate", "routes", "--url", grpc_url, "set",
                    ROUTE, f"{MODEL}:1=50", f"{MODEL}:2=50"],
                   check=True, stdout=subprocess.DEVNULL, timeout=60)


# --- the run ----------------------------------------------------------------------------

async def soak(args, server: Server) -> dict:
    model = ROUTE if args.routes else MODEL
    seconds = args.minutes * 60
    warm = warmup_seconds(seconds)
    result: dict = {"protocol": args.protocol, "model": model, "seconds": seconds}
    async with Clients(args.protocol, server.grpc, server.http, model) as clients:
        if args.rate:
            rate = args.rate
        else:
            cap = await capacity(clients, args.probe_seconds, args.concurrency)
            result["capacity_rps"] = cap
            rate = cap * args.load
            print(f"capacity {cap:.0f} req/s ({args.protocol}, closed loop, "
                  f"{args.concurrency} in flight)")
        result["rate_rps"] = rate
        print(f"soak at {rate:.0f} req/s for {seconds:.0f} s ({args.protocol}, {model}"
              + ", stream" * args.stream + (f", churn every {args.churn:g} s" if args.churn else "")
              + (f", tracing {args.trace_ratio:g}" if args.trace_ratio else "") + ")")
        clients.sent.clear()
        stop = asyncio.Event()
        samples: list = []
        side = [asyncio.create_task(sample_rss(server.proc.pid, samples, stop))]
        if args.stream:
            side.append(asyncio.create_task(keep_stream(server.grpc, model, args.stream_rate,
                                                        stop)))
        if args.churn:
            side.append(asyncio.create_task(churn(server.grpc, CHURN_MODEL, args.churn, stop)))

        async def mark():
            await asyncio.sleep(warm)
            return await asyncio.to_thread(heap_snapshot, server.metrics, "mark=1&top=5")

        marker = asyncio.create_task(mark()) if args.heap else None
        ok, errors = await open_loop(clients, rate, seconds)
        stop.set()
        done = await asyncio.gather(*side)
        if marker is not None:
            await marker
            result["heap"] = await asyncio.to_thread(heap_snapshot, server.metrics,
                                                     f"diff=1&top={args.heap_top}")
    result["requests"] = {"ok": ok, "not_sent": errors.pop(NOT_SENT, 0),
                          "errors": dict(errors), "sent_by_protocol": dict(clients.sent)}
    result["rss_samples"] = samples
    if args.stream:
        result["stream"] = done[1]
    if args.churn:
        result["churn"] = done[-1]
    return result


def print_heap(heap: dict, top: int) -> None:
    tm = heap["tracemalloc"]
    print(f"heap: tracemalloc {tm['current_bytes'] / 2**20:.1f} MiB traced "
          f"(peak {tm['peak_bytes'] / 2**20:.1f}), {heap['gc']['tracked']} objects"
          + (f"; malloc in use {heap['malloc']['uordblks'] / 2**20:.1f} MiB, free in heap "
             f"{heap['malloc']['fordblks'] / 2**20:.1f} MiB, mmapped "
             f"{heap['malloc']['hblkhd'] / 2**20:.1f} MiB" if heap.get("malloc") else ""))
    print("heap growth since the end of the warm-up, by allocation site:")
    for s in heap.get("growth_sites", [])[:top]:
        print(f"  {s['size_diff_bytes'] / 1024:+10.1f} KiB {s['count_diff']:+8d} blocks  "
              f"{s['site']}")
    print("  by object type: " + ", ".join(
        f"{name} {n:+d}" for name, n in list(heap.get("growth_types", {}).items())[:top]))


def report(args, result: dict, code: int) -> bool:
    """Print the summary; True when the run failed."""
    trend = result["memory"]
    req = result["requests"]
    samples = result.pop("rss_samples")
    after = [kib for t, kib in samples if t >= trend["warmup_s"]]
    if after:
        tenth = max(1, len(after) // 10)
        print("RSS MiB every tenth of the run after warm-up: "
              + " ".join(f"{kib / 1024:.1f}" for kib in after[::tenth]))
    print(f"requests ok {req['ok']} ({', '.join(f'{k} {v}' for k, v in req['sent_by_protocol'].items())}),"
          f" errors {req['errors'] or 0}; server exit code {code}")
    if req["not_sent"]:
        print(f"not sent: {req['not_sent']} ({req['not_sent'] / (req['ok'] + req['not_sent']) * 100:.2f}%):"
              f" the load generator had {MAX_IN_FLIGHT} requests in flight, behind its schedule")
    if "stream" in result:
        print("stream: " + ", ".join(f"{k} {v}" for k, v in result["stream"].items()))
    if "churn" in result:
        c = result["churn"]
        print(f"churn ({CHURN_MODEL}): loads {c['loads']}, unloads {c['unloads']}, "
              f"failures {c['failures'] or 0}")
    if result.get("server_counters"):
        print("server's counters (capacity probe included): "
              + ", ".join(f"{k} {v:.0f}" for k, v in result["server_counters"].items()))
    if "heap" in result:
        print_heap(result["heap"], args.heap_top)
    if "first_mib" in trend:
        print(f"RSS after warm-up ({trend['warmup_s']:.0f} s) {trend['first_mib']:.1f} MiB -> end "
              f"{trend['last_mib']:.1f} MiB (peak {trend['peak_mib']:.1f} MiB): first to last "
              f"{trend['growth_pct']:+.2f}%")
    if "slope_pct_per_h" in trend:
        print(f"RSS slope (least squares, {trend['samples']} samples): "
              f"{trend['slope_mib_per_h']:+.2f} ± {trend['ci95_mib_per_h']:.2f} MiB/h, "
              f"{trend['slope_pct_per_h']:+.2f} ± {trend['ci95_pct_per_h']:.2f} %/h "
              f"(95% interval, samples taken as independent: too narrow)")
    if "robust_slope_pct_per_h" in trend:
        print(f"RSS slope (repeated medians through per-minute medians, the verdict's): "
              f"{trend['robust_slope_mib_per_h']:+.2f} MiB/h, "
              f"{trend['robust_slope_pct_per_h']:+.2f} %/h")
    print(f"memory: {result['memory_verdict']} (slope < {args.max_slope_pct_per_hour:g} %/h"
          + (f"; judged from {MIN_JUDGED_S:.0f} s of samples" if result["memory_verdict"]
             == "NOT_JUDGED" else "") + ")")
    failed = (bool(req["errors"]) or code != 0 or result["memory_verdict"] == "FAIL"
              or ("stream" in result and (result["stream"]["errors"] or result["stream"]["lost"]
                                          or result["stream"]["stream_status"] != "OK"))
              or ("churn" in result and bool(result["churn"]["failures"])))
    print("FAIL" if failed else "PASS")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--protocol", choices=("grpc", "http", "mixed"), default="grpc")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--rate", type=float, default=0.0,
                    help="requests/s, instead of probing capacity (runs beside other work)")
    ap.add_argument("--concurrency", type=int, default=32, help="for the capacity probe")
    ap.add_argument("--probe-seconds", type=float, default=5.0)
    ap.add_argument("--max-slope-pct-per-hour", type=float, default=1.0)
    ap.add_argument("--stream", action="store_true",
                    help="keep one ModelStreamInfer stream open for the run")
    ap.add_argument("--stream-rate", type=float, default=50.0, help="requests/s on the stream")
    ap.add_argument("--churn", type=float, default=0.0, metavar="SECONDS",
                    help=f"load and unload {CHURN_MODEL} every SECONDS (explicit model control)")
    ap.add_argument("--routes", action="store_true",
                    help=f"send to route {ROUTE}: {MODEL} versions 1 and 2, 50/50")
    ap.add_argument("--trace-ratio", type=float, default=0.0,
                    help="trace this fraction of requests (console exporter, output drained)")
    ap.add_argument("--heap", action="store_true",
                    help="TENSORGATE_HEAP_DEBUG=1 on the server; report heap growth")
    ap.add_argument("--heap-top", type=int, default=15)
    ap.add_argument("--rss-log", help="write the RSS samples (seconds, KiB) to this CSV")
    ap.add_argument("--json-out", help="write every number of the summary to this JSON file")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `tensorgate serve` flag (repeat), e.g. --serve-arg=--gc-freeze=false")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = Server(args, Path(tmp))
        if not server.grpc:
            print("server did not start:\n" + "".join(server.tail), file=sys.stderr)
            server.stop()
            return 1
        try:
            if args.routes:
                set_route(server.grpc)
            result = asyncio.run(soak(args, server))
            result["server_counters"] = server_counters(server.metrics)
        finally:
            code = server.stop()
    if code != 0:
        print("server's last lines:\n" + "".join(list(server.tail)[-20:]), file=sys.stderr)
    result["server_exit_code"] = code
    samples = result["rss_samples"]
    if args.rss_log:
        with open(args.rss_log, "w") as f:
            f.write("seconds,rss_kib\n")
            f.writelines(f"{t:.1f},{kib}\n" for t, kib in samples)
    result["memory"] = rss_trend(samples, warmup_seconds(result["seconds"]))
    result["memory_verdict"] = judge_memory(result["memory"], args.max_slope_pct_per_hour)
    failed = report(args, result, code)
    result["verdict"] = "FAIL" if failed else "PASS"
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
