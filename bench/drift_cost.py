"""What drift monitoring costs in throughput (not a test).

    python -m bench.drift_cost [--concurrency 64] [--duration 10] [--repeat 3]
                               [--configs off,noprofile,on] [--out DIR]

The bench repository (bench/models.py) is written twice to a temporary directory: once
as it is, once with a ``profile.json`` for the model (``--model``, convnet by default) made by ``tensorgate profile`` from
``--profile-rows`` N(0, 1) rows (what the load generator's random data draws from).
Each configuration starts its own ``tensorgate serve`` (free ports), runs one
closed-loop step of ``python -m bench run`` on that model against it and stops it; the
configurations alternate ``--repeat`` times, each round starting with the next one, so
a noisy machine hits them all alike:

- ``off``: the profiled repository, ``--drift-sample-ratio 0`` (monitoring off: no
  listener, no observer);
- ``noprofile``: the plain repository, default settings (monitoring on, nothing has a
  profile: the observer is not on the data plane's list);
- ``on``: the profiled repository, default settings (every request summarised; windows
  of 60 s or 5,000 rows);
- ``onN`` (e.g. ``on25``): the same with ``--drift-sample-ratio N/100``.

Prints req/s per run, the medians and their ratio to the first configuration, the
server's CPU per request, and where drift runs the rows the drift thread summarised,
its windows, the samples it dropped and its own CPU time per row
(``tensorgate_drift_*_total`` read from /metrics before the server stops): the cost
measured inside the server, steadier than throughput on a shared machine.
The load generator shares the machine with the server: on 2 cores the ratios matter,
not the absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.models import MODELS, build_bench_repository  # noqa: E402

READY = re.compile(r"ready grpc=([\d.]+):(\d+) http=\S+ metrics=([\d.]+):(\d+)")
DEFAULT_MODEL = "convnet"


def _repositories(root: Path, rows: int, model: str) -> dict[str, Path]:
    plain = build_bench_repository(root / "plain")
    profiled = root / "profiled"
    shutil.copytree(plain, profiled)
    spec = MODELS[model]
    data = root / "reference.npz"
    rng = np.random.default_rng(1)
    np.savez(data, **{spec.input_name: rng.standard_normal(
        (rows, *spec.input_shape)).astype(np.float32)})
    subprocess.run([sys.executable, "-m", "tensorgate", "profile", "--model-repository",
                    str(profiled), "--model", model, "--data", str(data)], check=True)
    return {"plain": plain, "profiled": profiled}


def _server_args(config: str, repos: dict[str, Path]) -> list[str]:
    if config == "off":
        return ["--model-repository", str(repos["profiled"]), "--drift-sample-ratio", "0"]
    if config == "noprofile":
        return ["--model-repository", str(repos["plain"])]
    if config == "on":
        return ["--model-repository", str(repos["profiled"])]
    if config.startswith("on") and config[2:].isdigit():  # e.g. on25: a sample ratio of 25%
        return ["--model-repository", str(repos["profiled"]), "--drift-sample-ratio",
                str(int(config[2:]) / 100)]
    raise SystemExit(f"unknown configuration {config!r} (off, noprofile, on, onN)")


def _start(config: str, repos):
    args = [sys.executable, "-m", "tensorgate", "serve", "--host", "127.0.0.1",
            "--grpc-port", "0", "--http-port", "-1", "--metrics-port", "0",
            *_server_args(config, repos)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    found: list[tuple[str, str]] = []
    ready = threading.Event()

    def drain():
        for line in proc.stderr:
            m = READY.search(line)
            if m and not found:
                found.append((f"{m.group(1)}:{m.group(2)}", f"{m.group(3)}:{m.group(4)}"))
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120):
        proc.kill()
        raise SystemExit(f"server for {config} never got ready")
    return proc, found[0][0], found[0][1]


def _drift_counters(metrics: str, model: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    out = {}
    for name in ("rows_total", "windows_total", "dropped_total", "cpu_seconds_total"):
        key = f'tensorgate_drift_{name}{{model="{model}",version="1"}} '
        for line in text.splitlines():
            if line.startswith(key):
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


def _run_once(config: str, repos, args) -> dict:
    proc, url, metrics = _start(config, repos)
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
        return {"rps": float(step["requests_per_s"]), "cpu_us": float(cpu),
                "errors": sum((step.get("errors") or {}).values()),
                "drift": _drift_counters(metrics, args.model)}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drift_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS),
                        help=f"the bench model (default {DEFAULT_MODEL})")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="closed-loop requests in flight (default 64)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="measured seconds per run (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="unmeasured seconds before each run (default 2)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of every configuration (default 3)")
    parser.add_argument("--configs", default="off,noprofile,on",
                        help="configurations in order, the first is the baseline "
                             "(default off,noprofile,on)")
    parser.add_argument("--profile-rows", type=int, default=2000,
                        help="reference rows for the model's profile (default 2000)")
    parser.add_argument("--out", default=None,
                        help="also write results.json and results.md here (default: none)")
    args = parser.parse_args(argv)
    configs = args.configs.split(",")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        repos = _repositories(Path(tmp), args.profile_rows, args.model)
        load_before = os.getloadavg()
        for i in range(args.repeat):
            shift = i % len(configs)  # each round starts with another configuration
            for config in configs[shift:] + configs[:shift]:
                r = _run_once(config, repos, args)
                runs[config].append(r)
                extra = ""
                if r["drift"]:
                    d = r["drift"]
                    rows = d.get("rows_total", 0)
                    extra = (f"  drift: {rows:,.0f} rows, {d.get('windows_total', 0):.0f} "
                             f"windows, {d.get('dropped_total', 0):.0f} dropped, thread CPU "
                             f"{d.get('cpu_seconds_total', 0) * 1e6 / max(rows, 1):.1f} "
                             "us/row")
                print(f"run {i + 1}/{args.repeat} {config:>9}: {r['rps']:9,.0f} req/s "
                      f"{r['cpu_us']:6.0f} server CPU us/req, {r['errors']} errors{extra}",
                      flush=True)
                time.sleep(0.5)
        load_after = os.getloadavg()
    base = statistics.median(r["rps"] for r in runs[configs[0]])
    base_cpu = statistics.median(r["cpu_us"] for r in runs[configs[0]])
    lines = [
        f"{args.model}, closed loop c={args.concurrency}, {args.duration:g} s per run after "
        f"{args.warmup:g} s warm-up, median of {args.repeat}; load average before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f}",
        "",
        f"| config | req/s (runs) | median req/s | vs {configs[0]} | server CPU us/req "
        f"(median) | vs {configs[0]} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for config in configs:
        med = statistics.median(r["rps"] for r in runs[config])
        med_cpu = statistics.median(r["cpu_us"] for r in runs[config])
        each = ", ".join(f"{r['rps']:,.0f}" for r in runs[config])
        lines.append(f"| {config} | {each} | {med:,.0f} | {med / base:.3f} | {med_cpu:.0f} "
                     f"| {med_cpu / base_cpu:.3f} |")
    print("\n" + "\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text("\n".join(lines) + "\n")
        (out / "results.json").write_text(json.dumps(
            {"args": vars(args), "load_before": load_before, "load_after": load_after,
             "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
