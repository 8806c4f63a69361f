"""What tracing costs in throughput: TensorGate with tracing off vs sampled tracing.

    python -m bench.tracing_cost [--model simple_mlp] [--concurrency 16] [--duration 5]
                                 [--repeat 3] [--configs off,1%]

Each configuration starts its own ``tensorgate serve`` (demo repository, free port),
runs one closed-loop step of ``python -m bench run`` against it, and stops it; the
configurations alternate ``--repeat`` times so drift on a noisy machine hits them all.
Configurations: ``off`` (--trace-exporter none: ACTIVE is None), ``N%`` (console
exporter to /dev/null, sample ratio N/100: spans are built, sampled ones formatted
and written), ``on0`` (tracing on, ratio 0: metadata read and a sampling decision per
request, no spans). Prints req/s per run, the medians and each median's ratio to ``off``.
Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

READY = re.compile(r"ready grpc=([\d.]+):(\d+)")


def _flags(config: str) -> list[str]:
    if config == "off":
        return ["--trace-exporter", "none"]
    if config == "on0":
        return ["--trace-exporter", "console", "--trace-sample-ratio", "0"]
    if config.endswith("%"):
        ratio = float(config[:-1]) / 100
        return ["--trace-exporter", "console", "--trace-sample-ratio", repr(ratio)]
    raise SystemExit(f"unknown configuration {config!r} (off, on0, N%)")


def _start(config: str):
    args = [sys.executable, "-m", "tensorgate", "serve", "--grpc-port", "0",
            "--http-port", "-1", "--metrics-port", "-1", *_flags(config)]
    # stdout (the console exporter's spans) goes to /dev/null; the log is on stderr.
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    found: list[str] = []
    ready = threading.Event()

    def drain():
        for line in proc.stderr:
            m = READY.search(line)
            if m and not found:
                found.append(f"{m.group(1)}:{m.group(2)}")
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(60):
        proc.kill()
        raise SystemExit(f"server for {config} never got ready")
    return proc, found[0]


def _run_once(config: str, args) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) of one closed-loop step."""
    proc, url = _start(config)
    try:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [sys.executable, "-m", "bench", "run", "--url", url, "--model", args.model,
                 "--concurrency", str(args.concurrency), "--duration", str(args.duration),
                 "--warmup", str(args.warmup), "--quiet", "--output", out,
                 "--server-pid", str(proc.pid)],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            doc = json.loads((Path(out) / "results.json").read_text())
        (step,) = doc["runs"][0]["steps"]
        cpu = (step.get("server_cpu") or {}).get("us_per_request") or float("nan")
        return float(step["requests_per_s"]), float(cpu)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="simple_mlp")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--configs", default="off,1%")
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    results: dict[str, list[float]] = {c: [] for c in configs}
    cpu: dict[str, list[float]] = {c: [] for c in configs}
    for i in range(args.repeat):
        for config in configs:
            rps, us = _run_once(config, args)
            results[config].append(rps)
            cpu[config].append(us)
            print(f"run {i + 1}/{args.repeat} {config:>5}: {rps:10,.0f} req/s "
                  f"{us:7.0f} server CPU us/req", flush=True)
            time.sleep(0.5)
    base = statistics.median(results[configs[0]])
    base_cpu = statistics.median(cpu[configs[0]])
    print(f"\n{args.model}, closed loop c={args.concurrency}, {args.duration:g} s per run, "
          f"median of {args.repeat}")
    print(f"| config | req/s (runs) | median req/s | vs {configs[0]} "
          f"| server CPU us/req (median) | vs {configs[0]} |")
    print("| --- | --- | --- | --- | --- | --- |")
    for config in configs:
        med = statistics.median(results[config])
        med_cpu = statistics.median(cpu[config])
        runs = ", ".join(f"{r:,.0f}" for r in results[config])
        print(f"| {config} | {runs} | {med:,.0f} | {med / base:.3f} | {med_cpu:.0f} "
              f"| {med_cpu / base_cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
