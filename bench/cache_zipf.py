"""Response cache under a Zipf-distributed repeated workload (not a test).

    python bench/cache_zipf.py                      # tiny_mlp and convnet, 5 s each
    python bench/cache_zipf.py --rounds 3 --out bench/results/X   # medians of 3, files

``--distinct`` different requests (1,000; random inputs, fixed seed), drawn with
P(k) proportional to 1/k^s (s = ``--zipf-s``, 1.1), sent by ``--concurrency`` (16)
closed-loop grpc.aio callers in this process, raw ModelInfer bytes. Three runs per model,
each ``--warmup`` seconds then ``--seconds`` measured:

- ``no cache``: a server without --cache-size (the model as usual);
- ``cache on, model off``: a server with --cache-size, the model without
  response_cache (what a model that does not cache pays when the server has a cache);
- ``cache on``: the same server, a copy of the model with response_cache enabled.

Prints throughput, p50/p99 latency, and for the cached model the hit ratio the server
counted (nv_cache_num_hits / nv_cache_num_lookups over the whole run, warm-up included,
as the cache starts empty with it) beside the ideal one for the same requests (each
distinct request misses the first time), and the mean lookup and insertion times. The
load generator shares the machine's cores with the server: on 2 cores these are floors.
``--rounds N`` repeats the three runs in alternating order and reports medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.models import MODELS, build_bench_repository  # noqa: E402

READY_RE = re.compile(r"ready grpc=([\d.]+):(\d+) http=\S+ metrics=([\d.]+):(\d+)")
INFER = "/inference.GRPCInferenceService/ModelInfer"
CACHE_SIZE = "256M"


def zipf_indices(distinct: int, s: float, count: int, seed: int) -> np.ndarray:
    """``count`` draws from 0..distinct-1 with P(k) ~ 1/(k+1)^s."""
    weights = 1.0 / np.arange(1, distinct + 1, dtype=np.float64) ** s
    rng = np.random.default_rng(seed)
    return rng.choice(distinct, size=count, p=weights / weights.sum())


def request_bodies(model: str, spec, distinct: int, seed: int) -> list[bytes]:
    from tritonclient.grpc import service_pb2 as pb

    rng = np.random.default_rng(seed)
    bodies = []
    for _ in range(distinct):
        req = pb.ModelInferRequest(model_name=model)
        req.inputs.add(name=spec.input_name, datatype="FP32", shape=[1, *spec.input_shape])
        x = rng.standard_normal((1, *spec.input_shape)).astype(np.float32)
        req.raw_input_contents.append(x.tobytes())
        bodies.append(req.SerializeToString())
    return bodies


class Server:
    def __init__(self, repo: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo),
               "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1",
               "--metrics-port", "0", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.url = self.metrics = ""
        deadline = time.monotonic() + 120
        for line in self.proc.stdout:
            match = READY_RE.search(line)
            if match:
                self.url = f"{match.group(1)}:{match.group(2)}"
                self.metrics = f"http://{match.group(3)}:{match.group(4)}/metrics"
                break
            if time.monotonic() > deadline:
                break
        if not self.url:
            self.stop()
            raise RuntimeError("tensorgate did not become ready")
        # Keep reading so the pipe never fills.
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def scrape(self, name: str) -> float:
        with urllib.request.urlopen(self.metrics, timeout=10) as response:
            text = response.read().decode()
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


async def drive(url: str, bodies: list[bytes], order: np.ndarray, concurrency: int,
                warmup: float, seconds: float) -> dict:
    import grpc

    position = 0
    latencies: list[float] = []
    measuring = False
    stop_at = time.monotonic() + warmup + seconds

    async with grpc.aio.insecure_channel(url) as channel:
        call = channel.unary_unary(INFER)

        async def caller() -> None:
            nonlocal position
            while True:
                now = time.monotonic()
                if now >= stop_at:
                    return
                index = int(order[position % len(order)])
                position += 1
                started = time.perf_counter()
                await call(bodies[index], timeout=30)
                if measuring:
                    latencies.append(time.perf_counter() - started)

        tasks = [asyncio.ensure_future(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    lat = np.array(latencies)
    return {
        "requests": len(lat),
        "throughput": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
    }


def measure(server: Server, model: str, bodies, order, args, cached: bool) -> dict:
    names = ("nv_cache_num_lookups", "nv_cache_num_hits", "nv_cache_num_misses",
             "nv_cache_num_entries", "nv_cache_lookup_duration", "nv_cache_insertion_duration")
    before = {n: server.scrape(n) for n in names} if cached else {}
    run = asyncio.run(drive(server.url, bodies, order, args.concurrency, args.warmup,
                            args.seconds))
    if cached:
        # Over the whole run, warm-up included (the cache starts empty with it), to
        # compare with the ideal ratio of the same requests.
        d = {n: server.scrape(n) - before[n] for n in names}
        lookups = d["nv_cache_num_lookups"]
        run["hit_ratio"] = d["nv_cache_num_hits"] / lookups if lookups else 0.0
        run["lookups"] = int(lookups)
        run["entries"] = int(d["nv_cache_num_entries"])
        # Per lookup (hashing the request included) and per insertion (copies).
        run["lookup_us"] = d["nv_cache_lookup_duration"] / lookups if lookups else 0.0
        misses = d["nv_cache_num_misses"]
        run["insertion_us"] = d["nv_cache_insertion_duration"] / misses if misses else 0.0
    return run


def report(meta: dict, medians: list, out: Path) -> str:
    """results.md: the medians as a table."""
    lines = [f"# Response cache, Zipf workload ({meta['distinct']} distinct requests, "
             f"s={meta['zipf_s']}, c={meta['concurrency']}, {meta['seconds']:g} s each)", "",
             f"{meta['machine']}; {meta['date']}; `python bench/cache_zipf.py --rounds "
             f"{meta['rounds']} --out {out}`; medians of {meta['rounds']} round(s) (every "
             "run in results.json); load average (other work on the machine) before "
             f"{meta['loadavg_before'][0]:.1f}, after {meta['loadavg_after'][0]:.1f}", "",
             "| model | run | infer/s | p50 ms | p99 ms | hit ratio (ideal) | lookup µs | "
             "insertion µs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in medians:
        cache = (f"{row['hit_ratio']:.3f} ({row['ideal_hit_ratio']:.3f}) | "
                 f"{row['lookup_us']:.1f} | {row['insertion_us']:.1f}"
                 if "hit_ratio" in row else " | | ")
        lines.append(f"| {row['model']} | {row['run']} | {row['throughput']:,.0f} | "
                     f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {cache} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny_mlp,convnet")
    parser.add_argument("--distinct", type=int, default=1000)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=20261206)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the three runs, in alternating order; medians reported")
    parser.add_argument("--out", type=Path, default=None, help="write results.json and .md here")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]

    work = Path(tempfile.mkdtemp(prefix="tg-cache-bench-"))
    plain = build_bench_repository(work / "plain")
    cached = work / "cached"
    shutil.copytree(plain, cached)
    for name in names:
        shutil.copytree(plain / name, cached / f"{name}_cached")
        config = cached / f"{name}_cached" / "config.pbtxt"
        text = config.read_text().replace(f'name: "{name}"', f'name: "{name}_cached"')
        config.write_text(text + "response_cache { enable: true }\n")

    order = zipf_indices(args.distinct, args.zipf_s, 2_000_000, args.seed)
    load_before = os.getloadavg()
    results = []
    try:
        runs = [("no cache", plain, (), False), ("cache on, model off", cached,
                ("--cache-size", CACHE_SIZE), False), ("cache on", cached,
                ("--cache-size", CACHE_SIZE), True)]
        schedule = []
        for round_ in range(args.rounds):  # A B C, C B A, ...: drifts of a shared machine
            schedule += [(round_, r) for r in (runs if round_ % 2 == 0 else runs[::-1])]
        for round_, (label, repo, flags, use_cache) in schedule:
            server = Server(repo, *flags)
            try:
                for name in names:
                    model = f"{name}_cached" if use_cache else name
                    bodies = request_bodies(model, MODELS[name], args.distinct, args.seed)
                    run = measure(server, model, bodies, order, args, use_cache)
                    row = {"model": name, "run": label, "round": round_, **run}
                    results.append(row)
                    print(f"{name:9s} {label:20s} {run['throughput']:8.0f} infer/s  "
                          f"p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms"
                          + (f"  hit ratio {run['hit_ratio']:.3f} ({run['entries']} entries,"
                             f" lookup {run['lookup_us']:.1f} us, insertion "
                             f"{run['insertion_us']:.1f} us)" if use_cache else ""), flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # The ideal hit ratio of the requests a run sends: the first of each distinct one
    # misses. Over n requests of this sequence:
    for row in results:
        if "lookups" in row:
            n = row["lookups"]
            row["ideal_hit_ratio"] = 1 - len(np.unique(order[:n])) / n if n else 0.0
    medians = []
    for name in names:
        for label, _, _, use_cache in runs:
            rows = [r for r in results if r["model"] == name and r["run"] == label]
            median = {"model": name, "run": label, "rounds": len(rows)}
            for field in ("throughput", "p50_ms", "p99_ms", "hit_ratio", "ideal_hit_ratio",
                          "lookup_us", "insertion_us"):
                if field in rows[0]:
                    median[field] = float(np.median([r[field] for r in rows]))
            medians.append(median)
    meta = {
        "distinct": args.distinct, "rounds": args.rounds, "zipf_s": args.zipf_s, "concurrency": args.concurrency,
        "seconds": args.seconds, "warmup": args.warmup, "cache_size": CACHE_SIZE,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                   f"{platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        # Other work on the machine: 1/5/15-minute load averages before and after.
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(
            json.dumps({"meta": meta, "medians": medians, "runs": results}, indent=2) + "\n")
        (args.out / "results.md").write_text(report(meta, medians, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
