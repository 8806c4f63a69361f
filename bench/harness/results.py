"""Results as files: one JSON document, a Markdown table, and the machine they ran on.

The JSON is the record (every number the run produced); the Markdown is what a reader
looks at. Document shape (``SCHEMA``):

    {"schema", "created", "command", "machine": {...},
     "runs": [{"server", "url", "protocol", "driver", "status", "model", "inputs",
               "scenario", "steps": [step row, see runner.merge_step]}],
     "ceiling": {...} (compare only), "comparison": [...] (compare only)}

A run whose server could not be started has ``status`` "not available: <reason>" or
"failed: <reason>" and no steps: it stays in the table so nothing is silently skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SCHEMA = "tensorgate-bench/1"
PACKAGES = ("tensorgate", "grpcio", "protobuf", "numpy", "uvloop", "onnxruntime",
            "onnxruntime-gpu", "hdrhistogram", "tritonclient", "mlserver", "nvidia-pytriton")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_revision() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}{'+dirty' if dirty else ''}" if rev else None


def machine() -> dict:
    """What the numbers ran on. Peer servers run in their own virtualenvs: their
    versions are in their runs' entries where the launcher reports them."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git": _git_revision(),
    }


def document(runs: list[dict], **extra) -> dict:
    return {
        "schema": SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        "runs": runs,
        **extra,
    }


def step_row(step, batch_size: int, *, ok: int | None, errors: dict[str, int],
             elapsed_s: float | None, requests_per_s: float, latency: dict,
             server: dict | None, client: dict) -> dict:
    """One step's entry, the same shape whichever driver measured it."""
    return {
        "step": step.label,
        "mode": step.mode,
        "concurrency": step.concurrency or None,
        "rate": step.rate or None,
        "batch_size": batch_size,
        "completed": None if ok is None else ok + sum(errors.values()),
        "ok": ok,
        "errors": dict(sorted(errors.items())),
        "elapsed_s": None if elapsed_s is None else round(elapsed_s, 3),
        "requests_per_s": round(requests_per_s, 1),
        "inferences_per_s": round(requests_per_s * batch_size, 1),
        "latency_us": latency,
        "server": server,
        "client": client,
    }


def not_run(server: str, status: str, model: str = "") -> dict:
    """A run entry for a server that was not measured, with why."""
    return {"server": server, "status": status, "model": model, "steps": []}


# -------------------------------------------------------------------- formatting


def fmt_us(value) -> str:
    """Latency for a table: µs below 10 ms, else ms; '-' when unknown."""
    if value is None:
        return "-"
    if value < 10_000:
        return f"{value:,.0f} µs"
    return f"{value / 1000:,.1f} ms"


def fmt_num(value, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_errors(errors: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "0"


def fmt_client(client: dict) -> str:
    """``cores (workers, busiest worker's share of a core)``, or the driver's name."""
    cpu = client.get("cpu_cores")
    if cpu is None:
        return "-"
    if client.get("busiest_worker") is None:
        return f"{cpu:.2f} ({client.get('driver', '')})"
    return f"{cpu:.2f} ({client.get('workers', 1)}w, max {client['busiest_worker']:.2f})"


def fmt_server_cpu(cpu: dict | None) -> str:
    """``cores (µs of CPU per request)`` when the server's processes were known."""
    if not cpu:
        return "-"
    per = cpu.get("us_per_request")
    return f"{cpu['cores']:.2f} ({'-' if per is None else f'{per:,.0f} µs/req'})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


STEP_COLUMNS = ["server", "model", "step", "req/s", "infer/s", "p50", "p90", "p99", "p99.9",
                "max", "errors", "srv queue", "srv compute", "srv batch", "srv CPU",
                "client CPU"]


def step_cells(run: dict, row: dict) -> list[str]:
    lat, srv, cli = row["latency_us"], row.get("server") or {}, row.get("client") or {}
    client = fmt_client(cli)
    return [run["server"], run.get("model", ""), row["step"], fmt_num(row["requests_per_s"]),
            fmt_num(row["inferences_per_s"]), fmt_us(lat.get("p50")), fmt_us(lat.get("p90")),
            fmt_us(lat.get("p99")), fmt_us(lat.get("p99.9")), fmt_us(lat.get("max")),
            fmt_errors(row["errors"]), fmt_us(srv.get("queue_us")),
            fmt_us(srv.get("compute_us")), fmt_num(srv.get("mean_batch"), 1),
            fmt_server_cpu(row.get("server_cpu")), client]


def markdown_steps(runs: list[dict]) -> str:
    """Every step of every run, one row each; runs without steps say why."""
    rows = []
    for run in runs:
        if not run.get("steps"):
            rows.append([run["server"], run.get("model", ""), run.get("status", "no steps")]
                        + ["-"] * (len(STEP_COLUMNS) - 3))
        for row in run.get("steps", []):
            rows.append(step_cells(run, row))
    return table(STEP_COLUMNS, rows)


def failures_markdown(runs: list[dict]) -> str:
    """Steps that were not measured (a failed pre-step check), each with its reason."""
    lines = [f"- {run['server']} {run.get('model', '')} {row['step']}: "
             + row["failed"].replace("\n", " ")[:1000]
             for run in runs for row in run.get("steps", []) if row.get("failed")]
    return "\n".join(lines)


def machine_markdown(info: dict) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items())
    return (f"Machine: {info['cpu']}, {info['usable_cores']} usable cores of {info['cores']}, "
            f"{info.get('memory_gib')} GiB, Python {info['python']}, {info['os']}; "
            f"git {info.get('git')}.  \nPackages: {packages}.")


LEGEND = """Columns: req/s and infer/s count successful requests (infer/s = req/s x batch size)
over the measured window; p50..max are client-side latencies (send to answer) of the
successful requests (over HTTP, wrk's latencies include any non-2xx answers); errors
are by gRPC status, over HTTP HTTP_NON_2XX and wrk's SOCKET_* errors (CHECK_FAILED: the
one request sent before the step failed, so the step was not measured); srv queue / srv
compute are the server's own per-request averages from ModelStatistics over the step
(warm-up included); srv batch is the server's mean executed batch; srv CPU is the
cores the server's processes used over the step and their CPU per request (only when the
server runs here and its PID is known: compare, or run --server-pid); client CPU is the
cores the load generator used (workers, and the busiest worker's share of its core: near
1.00 means the client set the pace, not the server; wrk: one process, its threads)."""


def markdown_document(doc: dict, title: str = "Benchmark") -> str:
    parts = [f"# {title}", "", f"`{doc.get('command', '')}` at {doc['created']}", "",
             machine_markdown(doc["machine"]), ""]
    if doc.get("comparison_markdown"):
        parts += ["## Comparison", "", doc["comparison_markdown"], ""]
    parts += ["## Steps", "", markdown_steps(doc["runs"]), "", LEGEND, ""]
    failures = failures_markdown(doc["runs"])
    if failures:
        parts += ["## Failed steps", "", failures, ""]
    return "\n".join(parts)


def write(doc: dict, out_dir: Path, title: str = "Benchmark", chart: bool = True) -> dict:
    """results.json, results.md and (with matplotlib) latency.png in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    paths["markdown"].write_text(markdown_document(doc, title))
    if chart:
        from bench.harness.chart import latency_chart

        png = latency_chart(doc["runs"], out_dir / "latency.png", title)
        if png is not None:
            paths["png"] = png
    return paths
