"""What prediction logging costs in throughput: the same server with it off vs 100 %.

    python -m bench.logging_cost [--model convnet] [--concurrency 64] [--duration 10]
                                 [--repeat 2] [--configs off,100%] [--out DIR]

Each run starts its own ``tensorgate serve`` over the bench repository (bench/models.py:
max batch 64, 1 ms batching delay, one instance, one intra-op thread), runs one
closed-loop step of ``python -m bench run`` against it, reads /metrics (rows and bytes
the prediction log wrote, captures dropped) and stops it with SIGTERM (which writes what
is still buffered). Configurations alternate ``--repeat`` times so that drift on a busy
machine hits both: ``off`` (no --prediction-log-dir: nothing on the observer list),
``N%`` (--prediction-log-dir in a temporary directory, --prediction-log-sample-ratio
N/100). Prints req/s and server CPU per request per run, the medians and their ratios
to the first configuration, and the load average before and after. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.models import build_bench_repository  # noqa: E402
from bench.serve_step import Server, add_step_arguments, closed_loop  # noqa: E402


def _flags(config: str, logs: Path) -> list[str]:
    if config == "off":
        return []
    if config.endswith("%"):
        ratio = float(config[:-1]) / 100
        return ["--prediction-log-dir", str(logs), "--prediction-log-sample-ratio", repr(ratio)]
    raise SystemExit(f"unknown configuration {config!r} (off, N%)")


def _metric(text: str, name: str) -> float:
    """The sum of a family's samples (every label set)."""
    pattern = rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _run_once(repo: Path, config: str, args) -> dict:
    logs = Path(tempfile.mkdtemp(prefix="tg-plog-", dir=args.log_dir))
    server = Server(["--model-repository", str(repo), "--metrics-port", "0",
                     *_flags(config, logs)])
    try:
        rps, cpu = closed_loop(server, args.model, args.concurrency, args.duration,
                               args.warmup)
        with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.stop()  # SIGTERM: the server writes the rows still buffered
    return {
        "rps": rps, "cpu_us": cpu,
        "captured": _metric(text, "tensorgate_prediction_log_captured_total"),
        "dropped": _metric(text, "tensorgate_prediction_log_dropped_total"),
        "logs": logs,
    }


def _written(logs: Path) -> tuple[int, int, int]:
    """(rows, bytes, files) in the finished Parquet files under ``logs``."""
    files = list(logs.rglob("part-*.parquet"))
    if not files:
        return 0, 0, 0
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    return rows, sum(f.stat().st_size for f in files), len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.logging_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, model="convnet", concurrency=64, duration=10.0, warmup=2.0,
                       repeat=2, configs="off,100%")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="where the logs are written (a fresh folder per run, removed "
                             "after it); default: the system's temporary directory")
    parser.add_argument("--out", type=Path, help="also write results.json here")
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    load_before = os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_bench_repository(Path(tmp) / "repo")
        for i in range(args.repeat):
            for config in configs:
                r = _run_once(repo, config, args)
                logs = r.pop("logs")
                r["rows"], r["bytes"], r["files"] = _written(logs)
                shutil.rmtree(logs, ignore_errors=True)
                r.update(config=config, round=i + 1)
                runs.append(r)
                print(f"run {i + 1}/{args.repeat} {config:>5}: {r['rps']:8,.0f} req/s "
                      f"{r['cpu_us']:6.0f} server CPU us/req; logged {r['rows']:,} rows "
                      f"({r['bytes'] / 1e6:,.1f} MB, {r['files']} files), dropped "
                      f"{r['dropped']:,.0f}", flush=True)
                time.sleep(0.5)
    load_after = os.getloadavg()
    by = {c: [r for r in runs if r["config"] == c] for c in configs}
    base = statistics.median(r["rps"] for r in by[configs[0]])
    base_cpu = statistics.median(r["cpu_us"] for r in by[configs[0]])
    print(f"\n{args.model}, closed loop c={args.concurrency}, {args.duration:g} s per run "
          f"({args.warmup:g} s warm-up), {args.repeat} alternating round(s); load average "
          f"before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"| config | req/s (runs) | median req/s | vs {configs[0]} "
          f"| server CPU us/req (median) | vs {configs[0]} | rows logged / dropped |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    summary = {}
    for config in configs:
        med = statistics.median(r["rps"] for r in by[config])
        med_cpu = statistics.median(r["cpu_us"] for r in by[config])
        listed = ", ".join(f"{r['rps']:,.0f}" for r in by[config])
        rows = sum(r["rows"] for r in by[config])
        dropped = sum(r["dropped"] for r in by[config])
        print(f"| {config} | {listed} | {med:,.0f} | {med / base:.3f} | {med_cpu:.0f} "
              f"| {med_cpu / base_cpu:.3f} | {rows:,} / {dropped:,.0f} |")
        summary[config] = {"median_rps": med, "ratio": med / base, "median_cpu_us": med_cpu}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        doc = {"model": args.model, "concurrency": args.concurrency, "duration_s": args.duration,
               "warmup_s": args.warmup, "load_before": load_before, "load_after": load_after,
               "runs": runs, "summary": summary}
        (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
