"""Soak: ~80% of measured capacity for N minutes; errors and server RSS growth.

    python bench/soak.py --minutes 10            # the issue's soak (not run in CI)
    python bench/soak.py --minutes 1 --load 0.8  # a quick look

Starts ``tensorgate serve`` on the bundled demo repository (simple_mlp, batch 1) on free
ports, measures capacity with a closed loop, then sends an open-loop (fixed-rate) load
at ``--load`` x capacity from one grpc.aio client process. Server RSS is sampled from
/proc every second; growth is reported from the end of the warm-up (the first 20% of the
run, at least 10 s) to the end. Exit status 1 if any request failed or RSS grew more
than --max-rss-growth (5% by default).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

READY_RE = re.compile(r"ready grpc=([\d.]+):(\d+) http=\S+ metrics=([\d.]+):(\d+)")
# A call grpc core sheds before the server's event loop accepts it (its backlog of
# unaccepted calls is full: the server is past capacity at that moment, e.g. on a
# shared machine) ends CANCELLED within milliseconds; reported apart from errors the
# server's code answered (README, the Errors table).
SHED_WITHIN_S = 0.05
SHED = "SHED_BY_GRPC_CORE"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def request_bytes() -> bytes:
    from tritonclient.grpc import service_pb2 as pb

    req = pb.ModelInferRequest(model_name="simple_mlp")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return req.SerializeToString()


async def capacity(url: str, seconds: float, concurrency: int) -> float:
    import grpc

    async with grpc.aio.insecure_channel(url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        body = request_bytes()
        done = 0
        stop = time.monotonic() + seconds

        async def worker():
            nonlocal done
            while time.monotonic() < stop:
                await call(body, timeout=10)
                done += 1

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - t0)


# Requests the generator keeps in flight at most. A Python client sharing two cores
# with the server can fall behind its own schedule; it would then send what it owes in
# bursts and hold ever more calls, until it alone ran the machine out of memory (two
# soaks against the native front end ended so, the server's RSS flat). Requests that
# find this many in flight are not sent and counted as NOT_SENT apart from errors.
MAX_IN_FLIGHT = 2000
NOT_SENT = "NOT_SENT"


async def open_loop(url: str, rate: float, seconds: float, pid: int | None, samples: list,
                    failures: list | None = None, body: bytes | None = None):
    """Fixed-rate load; (ok count, errors by status, with NOT_SENT for requests the
    generator could not start in time). ``pid``: sample its RSS each second into
    ``samples``; ``failures``: also collect (time offset, status, details)."""
    import grpc

    errors: collections.Counter = collections.Counter()
    ok = 0
    async with grpc.aio.insecure_channel(url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        body = body or request_bytes()
        pending: set = set()

        async def one():
            nonlocal ok
            started = time.monotonic()
            try:
                await call(body, timeout=10)
                ok += 1
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                if (exc.code() == grpc.StatusCode.CANCELLED
                        and time.monotonic() - started < SHED_WITHIN_S):
                    name = SHED
                errors[name] += 1
                if failures is not None:
                    failures.append((round(started - t0, 3), name,
                                     (exc.details() or "")[:120]))

        t0 = time.monotonic()
        next_sample = t0
        sent = 0
        while True:
            now = time.monotonic()
            if now - t0 >= seconds:
                break
            if pid is not None and now >= next_sample:
                samples.append((now - t0, rss_kib(pid)))
                next_sample += 1.0
            due = int((now - t0) * rate)
            if sent < due and len(pending) >= MAX_IN_FLIGHT:
                errors[NOT_SENT] += due - sent
                sent = due
            while sent < due:
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.001)
        if pending:
            await asyncio.gather(*pending)
    return ok, errors


# The server's transport counters on /metrics: grpc core's (TransportCollector; with the
# native front end they count only the RPCs it relays) and the native front end's own.
TRANSPORT_PREFIXES = ("tensorgate_grpc_calls_", "tensorgate_native_")


def transport_counters(metrics_url: str) -> dict[str, float]:
    """The transport counters from the server's /metrics, by name less the prefix."""
    import urllib.request

    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        for prefix in TRANSPORT_PREFIXES:
            if line.startswith(prefix):
                name, value = line.split()[:2]
                out[prefix.split("_")[1] + ":" + name[len(prefix):]] = float(value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of measured capacity")
    ap.add_argument("--concurrency", type=int, default=32, help="for the capacity probe")
    ap.add_argument("--max-rss-growth", type=float, default=0.05)
    ap.add_argument("--rss-log", help="write the RSS samples (seconds, KiB) to this CSV")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `tensorgate serve` flag (repeat), e.g. --serve-arg=--gc-freeze=false")
    args = ap.parse_args()

    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorgate", "serve", "--grpc-port", "0", "--http-port", "-1",
         "--metrics-port", "0", *args.serve_arg],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = metrics = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        m = READY_RE.search(line)
        if m:
            url = f"{m.group(1)}:{m.group(2)}"
            metrics = f"http://{m.group(3)}:{m.group(4)}/metrics"
            break
    if not url:
        print("server did not start", file=sys.stderr)
        return 1
    threading.Thread(target=lambda: collections.deque(proc.stdout, 0), daemon=True).start()
    try:
        cap = asyncio.run(capacity(url, 5.0, args.concurrency))
        rate = cap * args.load
        seconds = args.minutes * 60
        print(f"capacity {cap:.0f} req/s (closed loop, {args.concurrency} in flight); "
              f"soak at {rate:.0f} req/s for {seconds:.0f} s")
        samples: list = []
        ok, errors = asyncio.run(open_loop(url, rate, seconds, proc.pid, samples))
        transport = transport_counters(metrics)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
    warm = max(10.0, seconds * 0.2)
    if args.rss_log:
        with open(args.rss_log, "w") as f:
            f.write("seconds,rss_kib\n")
            f.writelines(f"{t:.1f},{kib}\n" for t, kib in samples)
    after = [kib for t, kib in samples if t >= warm]
    tenth = max(1, len(after) // 10)
    print("RSS MiB every tenth of the run after warm-up: "
          + " ".join(f"{kib / 1024:.1f}" for kib in after[::tenth]))
    base, last, peak = after[0], after[-1], max(after)
    growth = (last - base) / base
    not_sent = errors.pop(NOT_SENT, 0)
    print(f"requests ok {ok}, errors {dict(errors) or 0}; server exit code {code}")
    if not_sent:
        print(f"not sent: {not_sent} ({not_sent / (ok + not_sent) * 100:.2f}%): the load "
              f"generator had {MAX_IN_FLIGHT} requests in flight, behind its schedule")
    print("server's transport counters (capacity probe included): "
          + ", ".join(f"{k} {v:.0f}" for k, v in transport.items()))
    print(f"RSS after warm-up ({warm:.0f} s) {base / 1024:.1f} MiB -> end {last / 1024:.1f} MiB "
          f"(peak {peak / 1024:.1f} MiB): growth {growth * 100:+.2f}%")
    failed = bool(errors) or growth > args.max_rss_growth or code != 0
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
