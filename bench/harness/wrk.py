"""The HTTP driver: wrk (a C load generator) POSTs one v2 JSON body, we parse its report.

Closed loop: ``wrk -c C`` keeps C keep-alive connections, each with one request in
flight (wrk does not pipeline), spread over ``-t`` threads: 1 at c=1, 2 otherwise (a
2-core machine; wrk's own CPU shows as client CPU). Every request carries the same body
(payload.build_json_body), so every server parses the same bytes.

A Lua ``done()`` hook prints the step's exact figures as one JSON line (requests,
duration, socket errors, responses >= 400, latency percentiles in µs from wrk's own
histogram); wrk's usual text report (``--latency``) stays in stdout for the reader.
wrk has no warm-up, so a throw-away run of warmup_s comes first (as for perf_analyzer),
and it takes whole seconds, so a step's window is duration_s rounded up.

wrk counts a response with status >= 400 as an error ("Non-2xx or 3xx responses") but
still in its request count and latency histogram; socket errors (connect, read, write,
timeout) are requests that never completed. Both are reported as errors here.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness.http_control import model_path
from bench.harness.results import step_row
from bench.harness.scenario import Scenario, Step

MARKER = "BENCH-WRK "
TIMEOUT_S = 10  # wrk's per-request timeout (its default, 2 s, is short for c=64 peers)
RUN_MARGIN_S = 30.0  # beyond its window before a wrk run is killed
# Error labels in the step rows (the gRPC driver's are status names).
STATUS_ERROR = "HTTP_NON_2XX"
SOCKET_ERRORS = ("connect", "read", "write", "timeout")

_LUA = """-- written by bench/harness/wrk.py: one JSON body POSTed on every request
wrk.method = "POST"
local f = assert(io.open({body_path}, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
{headers}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{marker}{{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


class WrkError(RuntimeError):
    pass


def find() -> str | None:
    return shutil.which("wrk")


def unavailable_reason() -> str | None:
    if find() is None:
        return "wrk not found on PATH: apt-get install wrk"
    return None


def _lua_string(text: str) -> str:
    """A Lua long-bracket literal holding ``text`` verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(body_path: str, headers: dict[str, str] | None = None) -> str:
    # "headers[ [[k]] ]": written "headers[[[k]]]", Lua would read a call headers[[...]].
    lines = [f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}"
             for k, v in (headers or {}).items()]
    return _LUA.format(body_path=_lua_string(body_path), headers="\n".join(lines),
                       marker=MARKER)


def threads_for(concurrency: int) -> int:
    return 1 if concurrency <= 1 else 2


def command(binary: str, url: str, scenario: Scenario, step: Step, script: Path,
            seconds: int) -> list[str]:
    if not step.concurrency:
        raise WrkError(f"{step.label}: wrk runs closed-loop steps only (no request rates)")
    target = f"http://{url}{model_path(scenario.model, scenario.version)}/infer"
    return [binary, "-t", str(threads_for(step.concurrency)), "-c", str(step.concurrency),
            "-d", f"{seconds}s", "--timeout", f"{TIMEOUT_S}s", "--latency",
            "-s", str(script), target]


def parse(stdout: str) -> dict:
    """The done() hook's figures from wrk's stdout; WrkError if it printed none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    raise WrkError(f"wrk printed no {MARKER.strip()} line\n{stdout[-2000:]}")


def step_of(report: dict, step: Step, scenario: Scenario, client: dict) -> dict:
    """One step row (runner.merge_step's shape) from a parsed wrk report."""
    errors_in = report["errors"]
    errors = {STATUS_ERROR: errors_in["status"]}
    errors.update({f"SOCKET_{k.upper()}": errors_in[k] for k in SOCKET_ERRORS})
    errors = {k: v for k, v in errors.items() if v}
    ok = report["requests"] - errors_in["status"]
    elapsed_s = report["duration_us"] / 1e6
    lat = report["latency_us"]
    latency = {"count": report["requests"], "mean": lat["mean"], "p50": lat["p50"],
               "p90": lat["p90"], "p99": lat["p99"], "p99.9": lat["p99.9"], "max": lat["max"]}
    if report["requests"] == 0:
        latency = {k: (0 if k == "count" else None) for k in latency}
    client = {**client, "response_bytes": report["bytes"]}
    return step_row(step, scenario.batch_size, ok=ok, errors=errors, elapsed_s=elapsed_s,
                    requests_per_s=ok / elapsed_s if elapsed_s > 0 else 0.0,
                    latency=latency, server=None, client=client)


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run wrk; (process, its CPU seconds, wall seconds)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), wall


def run_step(url: str, scenario: Scenario, step: Step, body: bytes,
             headers: dict[str, str] | None = None, work_dir: Path | None = None) -> dict:
    """Warm up, then measure one closed-loop step; the step row."""
    binary = find()
    if binary is None:
        raise WrkError(unavailable_reason())
    with tempfile.TemporaryDirectory(prefix="bench-wrk-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        (tmp / "body.json").write_bytes(body)
        script = tmp / "post.lua"
        script.write_text(lua_script(str(tmp / "body.json"), headers))
        if scenario.warmup_s > 0:
            warm = command(binary, url, scenario, step, script, math.ceil(scenario.warmup_s))
            _run(warm, scenario.warmup_s + RUN_MARGIN_S)
        seconds = math.ceil(scenario.duration_s)
        cmd = command(binary, url, scenario, step, script, seconds)
        try:
            proc, cpu, wall = _run(cmd, seconds + RUN_MARGIN_S)
        except subprocess.TimeoutExpired:
            raise WrkError(f"wrk ran past {seconds + RUN_MARGIN_S:.0f} s: "
                           f"{' '.join(cmd)}") from None
        if proc.returncode != 0:
            raise WrkError(f"wrk exited {proc.returncode}: {' '.join(cmd)}\n"
                           f"{(proc.stdout + proc.stderr)[-2000:]}")
        report = parse(proc.stdout)
    client = {"driver": "wrk", "workers": threads_for(step.concurrency),
              "cpu_cores": round(cpu / wall, 2) if wall > 0 else None,
              "busiest_worker": None,  # one process, its threads not measured apart
              "command": " ".join(cmd[:-3] + ["-s", "post.lua", cmd[-1]])}
    return step_of(report, step, scenario, client)
