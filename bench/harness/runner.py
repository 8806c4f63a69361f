"""Run a scenario against one server: resolve inputs, build the request bytes, then
for each step load the server (our workers or perf_analyzer over gRPC, wrk over
HTTP/REST) and read its statistics before and after. The result is a plain dict
(results.py writes and tabulates it).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

from bench.harness import histogram as hdr
from bench.harness.control import ServerControl, stats_delta
from bench.harness.loadgen import WorkerResult, WorkerSpec
from bench.harness.payload import InputSpec, build_payloads, resolve_inputs
from bench.harness.results import step_row
from bench.harness.scenario import Scenario, ScenarioError, Step

# Auto worker count: one worker process per this much load. A grpc.aio client process
# handles a few thousand requests/s per core; past that it would set the pace itself.
CONCURRENCY_PER_WORKER = 32
RATE_PER_WORKER = 2500.0
DRAIN_S = 10.0  # in-flight requests at the end of a step may take this long
READY_TIMEOUT_S = 60.0


def workers_for(step: Step, scenario: Scenario) -> int:
    if scenario.workers:
        count = scenario.workers
    elif step.concurrency:
        count = math.ceil(step.concurrency / CONCURRENCY_PER_WORKER)
    else:
        count = math.ceil(step.rate / RATE_PER_WORKER)
    count = min(count, os.cpu_count() or 1) if not scenario.workers else count
    if step.concurrency:
        count = min(count, step.concurrency)  # every worker needs a request in flight
    return max(count, 1)


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def worker_specs(url: str, step: Step, scenario: Scenario, payloads: list[bytes],
                 headers: dict[str, str]) -> list[WorkerSpec]:
    n = workers_for(step, scenario)
    concurrency = split(step.concurrency, n) if step.concurrency else [0] * n
    quotas = split(scenario.requests, n) if scenario.requests else [None] * n
    timeout = scenario.deadline_ms / 1000 if scenario.deadline_ms else None
    # The sum of independent Poisson processes is Poisson at the summed rate, so each
    # worker draws its own arrivals (own seed) at rate / n.
    return [
        WorkerSpec(
            url=url, payloads=tuple(payloads), concurrency=concurrency[i],
            rate=step.rate / n if step.rate else 0.0, requests=quotas[i],
            warmup_s=scenario.warmup_s, duration_s=scenario.duration_s, timeout_s=timeout,
            headers=tuple(headers.items()), max_outstanding=max(scenario.max_outstanding // n, 1),
            verify=scenario.verify, seed=scenario.seed * 1000 + i, drain_s=DRAIN_S,
            first_payload=i * 7,
        )
        for i in range(n)
        if step.rate or concurrency[i] > 0
    ]


def merge_step(step: Step, scenario: Scenario, results: list[WorkerResult],
               server: dict | None) -> dict:
    """One step's row: counts, throughput, merged latency, server split, client CPU."""
    ok = sum(r.ok for r in results)
    errors: dict[str, int] = {}
    for r in results:
        for status, count in r.errors.items():
            errors[status] = errors.get(status, 0) + count
    # Every worker measured over the same window (common start); the longest is the
    # window of the whole step.
    elapsed_s = max(r.elapsed_ns for r in results) / 1e9
    latency = hdr.summarize(hdr.merge(r.histogram for r in results),
                            max((r.max_us for r in results), default=None))
    lag = hdr.merge(r.lag for r in results)
    cpu = [r.cpu_s / r.wall_s for r in results if r.wall_s > 0]
    client = {
        "driver": "harness",
        "workers": len(results),
        # Cores the generator used over the window (all workers); and the busiest
        # worker's share of its one core: near 1.0 means the client set the pace.
        "cpu_cores": round(sum(cpu), 2) if cpu else None,
        "busiest_worker": round(max(cpu), 2) if cpu else None,
        "warmup_requests": sum(r.warmup_requests for r in results),
        "skipped": sum(r.skipped for r in results),
        "send_lag_p99_us": lag.get_value_at_percentile(99) if lag.get_total_count() else None,
        "send_lag_max_us": max((r.lag_max_us for r in results), default=0) or None,
        "response_bytes": sum(r.response_bytes for r in results),
    }
    return step_row(step, scenario.batch_size, ok=ok, errors=errors, elapsed_s=elapsed_s,
                    requests_per_s=ok / elapsed_s, latency=latency, server=server,
                    client=client)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"), console=Console(stderr=True), transient=False,
    )


PROTOCOLS = ("grpc", "http")
DRIVERS = {"grpc": ("harness", "perf_analyzer"), "http": ("wrk",)}


def control_for(protocol: str, url: str, headers: dict[str, str]):
    """The control-plane client for ``protocol``: ServerControl (gRPC) or HttpControl."""
    if protocol == "http":
        from bench.harness.http_control import HttpControl

        return HttpControl(url, headers)
    if protocol == "grpc":
        return ServerControl(url, headers)
    raise ValueError(f"unknown protocol {protocol!r}: one of {PROTOCOLS}")


def resolve(url: str, scenario: Scenario, headers: dict[str, str],
            protocol: str = "grpc") -> list[InputSpec]:
    """The inputs to send: the scenario's, completed from the server's metadata."""
    with control_for(protocol, url, headers) as control:
        control.wait_model_ready(scenario.model, scenario.version, READY_TIMEOUT_S)
        metadata = control.model_metadata(scenario.model, scenario.version)
        return resolve_inputs(scenario, metadata,
                              control.max_batch_size(scenario.model, scenario.version))


def process_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds so far of the given processes (from /proc)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # ended, or not on this host
        fields = stat.rsplit(")", 1)[1].split()  # after the command name: state ppid ...
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


class _ServerCpu:
    """The server's CPU over one step, when its processes are local and known: cores
    busy, and CPU µs per request (warm-up requests included, since the window is the
    whole step). The figure PEERS.md's transport analysis rests on."""

    def __init__(self, server_pids) -> None:
        self.server_pids = server_pids
        self.start = None

    def __enter__(self) -> _ServerCpu:
        if self.server_pids is not None:
            self.start = (process_cpu_s(self.server_pids()), time.monotonic())
        return self

    def __exit__(self, *exc) -> None:
        pass

    def attach(self, row: dict) -> dict:
        if self.start is None:
            return row
        cpu = process_cpu_s(self.server_pids()) - self.start[0]
        wall = time.monotonic() - self.start[1]
        requests = (row.get("completed") or 0) + (row.get("client", {}).get("warmup_requests") or 0)
        row["server_cpu"] = {"cores": round(cpu / wall, 2),
                             "us_per_request": round(cpu / requests * 1e6, 1) if requests else None}
        return row


def run_scenario(url: str, scenario: Scenario, *, server: str = "server",
                 driver: str = "harness", headers: dict[str, str] | None = None,
                 progress: bool = True, inputs: list[InputSpec] | None = None,
                 server_pids=None, work_dir=None, protocol: str = "grpc",
                 control_headers: dict[str, str] | None = None,
                 expect_outputs: tuple[str, ...] = ()) -> dict:
    """Every step of ``scenario`` against ``url``; the run's result dict.

    ``headers`` add to the scenario's (a peer's access token, say). ``inputs``: send
    exactly these (a comparison sends every server the same tensors); otherwise they
    are resolved from the scenario and the server's metadata. ``server_pids()``: the
    server's local processes, for its CPU use per step.

    ``protocol`` "http": ``url`` is a v2 HTTP/REST endpoint and the driver is wrk;
    before each step one request checks the answer (200, outputs named
    ``expect_outputs`` or the scenario's), else the step is recorded as failed.
    ``control_headers`` go with the control calls only (metadata, statistics).
    """
    if driver not in DRIVERS.get(protocol, ()):
        raise ScenarioError(f"driver {driver!r} does not speak {protocol!r} "
                            f"(drivers for it: {', '.join(DRIVERS.get(protocol, ()))})")
    if driver == "wrk" and scenario.rates:
        raise ScenarioError("wrk runs closed-loop steps only: give --concurrency, not --rates")
    headers = {**scenario.headers, **(headers or {})}
    control_headers = {**headers, **(control_headers or {})}
    if inputs is None:
        specs = resolve(url, scenario, control_headers, protocol)
    else:
        specs = inputs
        with control_for(protocol, url, control_headers) as control:
            control.wait_model_ready(scenario.model, scenario.version, READY_TIMEOUT_S)
    steps = scenario.steps()
    rows = []
    with control_for(protocol, url, control_headers) as control, _progress(progress) as bar:
        def stats():
            return control.statistics(scenario.model, scenario.version)

        if driver == "perf_analyzer":
            from bench.harness import perf_analyzer

            for step in steps:
                before = stats()
                with _ServerCpu(server_pids) as server_cpu:
                    row = perf_analyzer.run_step(url, scenario, specs, step, headers, work_dir)
                row["server"] = row.get("server") or stats_delta(before, stats())
                rows.append(server_cpu.attach(row))
                if bar is not None:
                    bar.console.print(f"  {server} {step.label}: {_info_of(row)}")
        elif driver == "harness":
            from bench.harness.workers import WorkerPool

            payloads = build_payloads(scenario, specs)
            with WorkerPool(max(workers_for(s, scenario) for s in steps)) as pool:
                for step in steps:
                    before = stats()
                    wspecs = worker_specs(url, step, scenario, payloads, headers)
                    update = _progress_callback(bar, server, step, scenario)
                    with _ServerCpu(server_pids) as server_cpu:
                        results = pool.run_step(wspecs, update)
                    if update is not None:
                        update.finish()
                    row = merge_step(step, scenario, results, stats_delta(before, stats()))
                    rows.append(server_cpu.attach(row))
        elif driver == "wrk":
            from bench.harness import wrk
            from bench.harness.payload import build_json_body

            body = build_json_body(scenario, specs)
            expect = tuple(expect_outputs) or scenario.outputs
            for step in steps:
                before = stats()
                problem = control.check_infer(scenario.model, scenario.version, body, expect)
                if problem is not None:
                    row = failed_step(step, scenario, problem, driver)
                else:
                    with _ServerCpu(server_pids) as server_cpu:
                        row = wrk.run_step(url, scenario, step, body, headers, work_dir)
                    row["server"] = stats_delta(before, stats())
                    row = server_cpu.attach(row)
                rows.append(row)
                if bar is not None:
                    bar.console.print(f"  {server} {step.label}: {_info_of(row)}")
    return {
        "server": server,
        "url": url,
        "protocol": protocol,
        "driver": driver,
        "status": "ok",
        "model": scenario.model,
        "version": scenario.version,
        "inputs": [s.to_dict() for s in specs],
        "scenario": scenario.to_dict(),
        "steps": rows,
    }


def failed_step(step: Step, scenario: Scenario, reason: str, driver: str) -> dict:
    """A step that was not measured: the pre-step check failed; ``failed`` says why."""
    empty = {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None,
             "p99.9": None, "max": None}
    row = step_row(step, scenario.batch_size, ok=0, errors={"CHECK_FAILED": 1},
                   elapsed_s=None, requests_per_s=0.0, latency=empty, server=None,
                   client={"driver": driver})
    row["failed"] = reason
    return row


def _info_of(row: dict) -> str:
    if row.get("failed"):
        return "FAILED: " + row["failed"].splitlines()[0][:200]
    lat = row["latency_us"]
    p50 = "-" if lat.get("p50") is None else f"{lat['p50']} µs"
    return f"{row['inferences_per_s']:.0f} infer/s, p50 {p50}, errors {sum(row['errors'].values())}"


def _progress_callback(bar, server: str, step: Step, scenario: Scenario):
    if bar is None:
        return None
    total = scenario.warmup_s + scenario.duration_s
    task = bar.add_task(f"{server} {scenario.model} {step.label}", total=total, info="warm-up")
    started = time.monotonic()

    def update(ok: int, errors: int, warmup: int) -> None:
        elapsed = time.monotonic() - started
        phase = "warm-up" if elapsed < scenario.warmup_s else "measuring"
        bar.update(task, completed=min(elapsed, total),
                   info=f"{phase}: {ok} ok, {errors} errors ({warmup} warm-up)")

    def finish() -> None:
        bar.update(task, completed=total)

    update.finish = finish
    return update
