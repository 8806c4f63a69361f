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
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.serve_step import Server, add_step_arguments, closed_loop  # noqa: E402


def _flags(config: str) -> list[str]:
    if config == "off":
        return ["--trace-exporter", "none"]
    if config == "on0":
        return ["--trace-exporter", "console", "--trace-sample-ratio", "0"]
    if config.endswith("%"):
        ratio = float(config[:-1]) / 100
        return ["--trace-exporter", "console", "--trace-sample-ratio", repr(ratio)]
    raise SystemExit(f"unknown configuration {config!r} (off, on0, N%)")


def _run_once(config: str, args) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) of one closed-loop step."""
    # stdout (the console exporter's spans) goes to /dev/null; the log is on stderr.
    server = Server(["--metrics-port", "-1", *_flags(config)])
    try:
        return closed_loop(server, args.model, args.concurrency, args.duration, args.warmup)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, model="simple_mlp", concurrency=16, duration=5.0, warmup=1.0,
                       repeat=3, configs="off,1%")
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
