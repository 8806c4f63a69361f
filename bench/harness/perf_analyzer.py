"""The other driver: Triton's perf_analyzer runs the step, we parse what it writes.

Used to check our generator against an independent C++ one (``bench agree``) and for
servers where a reader wants perf_analyzer's numbers. Its CSV gives throughput, p50/
p90/p95/p99 and the server's queue/compute split; its stdout gives the request count
and the server's inference/execution counts. It reports no p99.9 or max (left blank).

Differences from our driver, stated where they show: perf_analyzer has no warm-up
option in 2.41 (we run one throw-away window first), no per-request deadline, and it
measures trials of ``-p`` ms until 3 agree: ``-s 1000`` makes any 3 agree, so a step is
3 windows of duration/3 (PEERS.md: the stability check may never converge here).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.harness.payload import InputSpec, make_arrays
from bench.harness.results import step_row
from bench.harness.scenario import Scenario, Step

REPO_ROOT = Path(__file__).resolve().parents[2]
TRIALS = 3
MIN_WINDOW_MS = 200
RUN_MARGIN_S = 60.0  # beyond its windows before a perf_analyzer run is killed


class PerfAnalyzerError(RuntimeError):
    pass


def find() -> tuple[str, dict[str, str]] | None:
    """(binary, environment) of an installed perf_analyzer, or None.

    Looks at $PERF_ANALYZER, then .tools/perf_analyzer in this checkout (where
    tests/tools/install_perf_analyzer.sh puts it, its libraries in .tools/lib), then
    PATH. The library path is set for the perf_analyzer process only (PEERS.md).
    """
    env = dict(os.environ)
    candidates = [os.environ.get("PERF_ANALYZER"), str(REPO_ROOT / ".tools" / "perf_analyzer"),
                  shutil.which("perf_analyzer")]
    for path in filter(None, candidates):
        if os.access(path, os.X_OK):
            lib = Path(path).resolve().parent / "lib"
            if lib.is_dir():
                env["LD_LIBRARY_PATH"] = os.pathsep.join(
                    filter(None, [str(lib), env.get("LD_LIBRARY_PATH")]))
            return path, env
    return None


def unavailable_reason() -> str | None:
    if find() is None:
        return ("perf_analyzer not found ($PERF_ANALYZER, .tools/perf_analyzer, PATH); "
                "run tests/tools/install_perf_analyzer.sh")
    return None


def _input_data(scenario: Scenario, specs: list[InputSpec], work_dir: Path) -> str:
    if scenario.data == "random":
        return "random"
    if scenario.data == "zeros":
        return "zero"
    # A file: rewrite as perf_analyzer's JSON, one entry per sample (it forms batches
    # of -b samples itself).
    entries = []
    for request in make_arrays(specs, scenario.data, scenario.distinct_requests, scenario.seed):
        rows = scenario.batch_size if specs[0].batched else 1
        for r in range(rows):
            entry = {}
            for spec in specs:
                arr = request[spec.name][r] if spec.batched else request[spec.name]
                content = ([v.decode(errors="replace") for v in arr.ravel()]
                           if spec.datatype == "BYTES" else arr.ravel().tolist())
                entry[spec.name] = {"content": content, "shape": list(spec.sample_shape)}
            entries.append(entry)
    path = work_dir / "input_data.json"
    path.write_text(json.dumps({"data": entries}))
    return str(path)


def command(binary: str, url: str, scenario: Scenario, specs: list[InputSpec], step: Step,
            headers: dict[str, str], csv_path: Path, input_data: str,
            window_ms: int | None = None) -> list[str]:
    window_ms = window_ms or max(int(scenario.duration_s * 1000 / TRIALS), MIN_WINDOW_MS)
    cmd = [binary, "-m", scenario.model, "-i", "grpc", "-u", url, "-b", str(scenario.batch_size),
           "--async", "-p", str(window_ms), "-s", "1000", "--max-trials", str(TRIALS),
           "--input-data", input_data, "-f", str(csv_path)]
    if scenario.version:
        cmd += ["-x", scenario.version]
    if step.concurrency:
        cmd += ["--concurrency-range", f"{step.concurrency}:{step.concurrency}"]
    else:
        cmd += ["--request-rate-range", f"{step.rate:g}:{step.rate:g}",
                "--request-distribution", "poisson"]
    if scenario.requests:
        cmd += ["--measurement-mode", "count_windows",
                "--measurement-request-count", str(math.ceil(scenario.requests / TRIALS))]
    for spec in specs:
        cmd += ["--shape", f"{spec.name}:{','.join(map(str, spec.sample_shape))}"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}:{value}"]
    return cmd


def _stdout_number(text: str, label: str) -> float | None:
    match = re.search(rf"{re.escape(label)}:\s*([\d.]+)", text)
    return float(match.group(1)) if match else None


def parse(csv_text: str, stdout: str, step: Step, scenario: Scenario) -> dict:
    """One step row (runner.merge_step's shape) from perf_analyzer's CSV and stdout."""
    rows = list(csv.DictReader(csv_text.splitlines()))
    if not rows:
        raise PerfAnalyzerError(f"perf_analyzer wrote no CSV rows\n{stdout[-2000:]}")
    row = rows[-1]

    def us(column: str) -> int | None:
        value = row.get(column)
        return int(float(value)) if value not in (None, "") else None

    infer_s = float(row["Inferences/Second"])
    req_s = infer_s / scenario.batch_size
    count = _stdout_number(stdout, "Request count")
    server_requests = _stdout_number(stdout, "Successful request count")
    inferences, executions = (_stdout_number(stdout, "Inference count"),
                              _stdout_number(stdout, "Execution count"))
    compute = [us(c) for c in ("Server Compute Input", "Server Compute Infer",
                               "Server Compute Output")]
    server = None
    if us("Server Queue") is not None and None not in compute:
        server = {
            "requests": int(server_requests) if server_requests else None,
            "failed": None,
            "queue_us": float(us("Server Queue")),
            "compute_us": float(sum(compute)),
            "compute_infer_us": float(compute[1]),
            "mean_batch": round(inferences / executions, 2) if inferences and executions else None,
        }
    ok = int(count) if count is not None else None
    latency = {"count": ok, "mean": _stdout_number(stdout, "Avg latency"),
               "p50": us("p50 latency"), "p90": us("p90 latency"), "p99": us("p99 latency"),
               "p99.9": None, "max": None}
    # errors: perf_analyzer stops at the first error instead of counting them.
    return step_row(step, scenario.batch_size, ok=ok, errors={},
                    elapsed_s=ok / req_s if ok and req_s else None, requests_per_s=req_s,
                    latency=latency, server=server,
                    client={"driver": "perf_analyzer", "workers": 1})


def _run(cmd: list[str], env: dict[str, str],
         timeout: float) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run perf_analyzer; (process, its CPU seconds, wall seconds)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - wall0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return proc, cpu, wall


def run_step(url: str, scenario: Scenario, specs: list[InputSpec], step: Step,
             headers: dict[str, str], work_dir: Path | None = None) -> dict:
    found = find()
    if found is None:
        raise PerfAnalyzerError(unavailable_reason())
    binary, env = found
    with tempfile.TemporaryDirectory(prefix="bench-pa-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        data = _input_data(scenario, specs, tmp)
        if scenario.warmup_s > 0:
            # Throw-away window: its result (often "unstable", so no CSV) is ignored.
            warm = command(binary, url, scenario, specs, step, headers, tmp / "warmup.csv", data,
                           window_ms=max(int(scenario.warmup_s * 1000), MIN_WINDOW_MS))
            warm[warm.index("--max-trials") + 1] = "1"
            _run(warm, env, scenario.warmup_s + RUN_MARGIN_S)
        csv_path = tmp / "perf.csv"
        cmd = command(binary, url, scenario, specs, step, headers, csv_path, data)
        timeout = scenario.duration_s * 2 + RUN_MARGIN_S
        try:
            proc, cpu, wall = _run(cmd, env, timeout)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(
                f"perf_analyzer ran past {timeout:.0f} s: {' '.join(cmd)}") from None
        if proc.returncode != 0 or not csv_path.exists():
            raise PerfAnalyzerError(f"perf_analyzer exited {proc.returncode}: {' '.join(cmd)}\n"
                                    f"{(proc.stdout + proc.stderr)[-3000:]}")
        row = parse(csv_path.read_text(), proc.stdout, step, scenario)
    # CPU over the whole perf_analyzer run (its windows are most of it).
    row["client"]["cpu_cores"] = round(cpu / wall, 2) if wall > 0 else None
    row["client"]["busiest_worker"] = None  # one multi-threaded process: no per-worker share
    return row
