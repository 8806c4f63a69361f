"""Measure the CPU image: its size, the time from `podman run` to serving, and throughput
through the container against the same server outside it (perf_analyzer, simple_mlp,
batch-1 requests at concurrency 64, one run each).

    .venv/bin/python tools/container/measure.py [--image localhost/tensorgate:cpu]
        [--ready-runs 3] [--concurrency 64] [--rounds 1] [--json out.json]

Without --image it builds this checkout's image (tools/container/build_image.sh). The
model repository is the demo one (tests/models/build_models.py), mounted read-only; the
server outside the container is this checkout's `tensorgate serve` from the venv running
this script, with the same flags. perf_analyzer is the one
tests/tools/install_perf_analyzer.sh puts in .tools/. Both servers run alone, one after
the other, on the same machine as perf_analyzer.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import container_support as support

ROOT = support.REPO_ROOT
TOOLS = ROOT / ".tools"
sys.path.insert(0, str(ROOT / "tests" / "models"))


def perf_analyzer(url: str, concurrency: int, out: Path) -> dict:
    """One perf_analyzer run (tests/e2e/test_perf_analyzer.py's flags, PEERS.md's
    stable ones); its CSV row: infer/s and p50/p99 in µs."""
    cmd = [str(TOOLS / "perf_analyzer"), "-m", "simple_mlp", "-i", "grpc", "-u", url,
           "-b", "1", "--async", "--concurrency-range", f"{concurrency}:{concurrency}",
           "-p", "3000", "-s", "1000", "--max-trials", "3", "-f", str(out)]
    proc = subprocess.run(cmd, env=dict(os.environ, LD_LIBRARY_PATH=str(TOOLS / "lib")),
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    row = next(csv.DictReader(out.open()))
    return {"infer_per_s": float(row["Inferences/Second"]),
            "p50_us": int(row["p50 latency"]), "p99_us": int(row["p99 latency"])}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def host_server(repo: Path, port: int) -> subprocess.Popen:
    """`tensorgate serve` from this venv on 127.0.0.1:port, in its own process group."""
    cmd = [str(Path(sys.executable).parent / "tensorgate"), "serve", "--model-repository",
           str(repo), "--host", "127.0.0.1", "--grpc-port", str(port), "--http-port", "-1",
           "--metrics-port", "-1"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_host(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1,
                              wait_for_ready=True).status == 1:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the host server did not start")
            time.sleep(0.1)


WHERE = ("container", "container_host_network", "host")


def _throughput(where: str, image: str, repo: Path, concurrency: int, out: Path) -> dict:
    """Start one server, run perf_analyzer once against it, stop it."""
    port = _free_port()
    if where == "host":
        proc = host_server(repo, port)
        try:
            wait_host(port, proc)
            return perf_analyzer(f"127.0.0.1:{port}", concurrency, out)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    serve = ("serve", "--model-repository", "/models")
    if where == "container":
        kwargs: dict = {"ports": {"grpc": 8001}}
    else:
        serve += ("--grpc-port", str(port), "--http-port", "-1", "--metrics-port", "-1")
        kwargs = {"ports": {"grpc": port}, "host_network": True}
    container = support.start(image, *serve, volumes=(f"{repo}:/models:ro",), **kwargs)
    try:
        support.wait_serving(container)
        return perf_analyzer(container.url(), concurrency, out)
    finally:
        container.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="an image already built (default: build this checkout)")
    parser.add_argument("--ready-runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1,
                        help="perf_analyzer runs per server, interleaved (default 1)")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    import build_models

    work = Path(tempfile.mkdtemp(prefix="tensorgate-measure-"))
    repo = build_models.build_demo_repository(work / "models")
    for path in [work, repo, *repo.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    image = args.image
    if image is None:
        started = time.monotonic()
        image = support.build_image("localhost/tensorgate:cpu", work / "build.log")
        print(f"built {image} in {time.monotonic() - started:.0f} s", flush=True)
    figures: dict = {"image": image, "image_size_mb": round(support.image_size(image) / 1e6, 1)}
    volume = (f"{repo}:/models:ro",)
    serve = ("serve", "--model-repository", "/models")
    ready = []
    for _ in range(args.ready_runs):
        started = time.monotonic()
        container = support.start(image, *serve, volumes=volume)
        try:
            support.wait_serving(container)
            ready.append(round(time.monotonic() - started, 2))
        finally:
            container.remove()
    figures["ready_s"] = ready
    figures["ready_s_median"] = statistics.median(ready)

    # Through a published port (podman's bridge and NAT, as `-p` deployments run), in
    # the host's network namespace (the image and runtime alone), and outside any
    # container. --rounds > 1 interleaves them, so load from elsewhere on the machine
    # falls on all three alike; the figures are each one's median over the rounds.
    runs: dict[str, list[dict]] = {where: [] for where in WHERE}
    for round_ in range(args.rounds):
        for where in WHERE:
            csv_path = work / f"{where}-{round_}.csv"
            runs[where].append(_throughput(where, image, repo, args.concurrency, csv_path))
            print(f"round {round_ + 1} {where}: {runs[where][-1]}", flush=True)
    for where in WHERE:
        figures[where] = {key: statistics.median(r[key] for r in runs[where])
                          for key in runs[where][0]}
        figures[where]["runs"] = runs[where]
    figures["concurrency"] = args.concurrency
    host = figures["host"]["infer_per_s"]
    figures["throughput_ratio"] = round(figures["container"]["infer_per_s"] / host, 3)
    figures["throughput_ratio_host_network"] = round(
        figures["container_host_network"]["infer_per_s"] / host, 3)

    print(f"image {image}: {figures['image_size_mb']} MB")
    print(f"podman run -> SERVING: {ready} s (median {figures['ready_s_median']} s)")
    for where in WHERE:
        f = figures[where]
        print(f"{where:22s} c={args.concurrency}: {f['infer_per_s']:,.0f} infer/s, "
              f"p50 {f['p50_us']:.0f} us, p99 {f['p99_us']:.0f} us "
              f"(median of {len(f['runs'])})")
    print(f"throughput container / host: {figures['throughput_ratio']} through a published "
          f"port, {figures['throughput_ratio_host_network']} on the host network")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
