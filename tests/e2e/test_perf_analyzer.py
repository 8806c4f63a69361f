"""Smoke load with Triton's own perf_analyzer against the bundled demo model.

perf_analyzer calls ModelMetadata and ModelConfig before it measures, then drives
ModelInfer; a few seconds at concurrency 1 and 16 must finish with zero errors on both
sides. tests/tools/install_perf_analyzer.sh puts the binary in .tools/ (the README's
test command runs it).
"""

from __future__ import annotations

import csv
import os
import subprocess

import pytest
import tritonclient.grpc as grpcclient

from e2e_support import REPO_ROOT, start_server

TOOLS = REPO_ROOT / ".tools"
PERF_ANALYZER = TOOLS / "perf_analyzer"

pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists(),
    reason="perf_analyzer not installed: run tests/tools/install_perf_analyzer.sh",
)


@pytest.fixture(scope="module")
def demo_server():
    with start_server(None, "--allow-client-shm") as srv:
        yield srv


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "protocol, concurrency, shared_memory",
    [("grpc", 1, "none"), ("grpc", 16, "none"), ("http", 16, "none"), ("grpc", 16, "system")],
)
def test_perf_analyzer_runs_clean(demo_server, tmp_path, protocol, concurrency, shared_memory):
    client = grpcclient.InferenceServerClient(demo_server.grpc_url)
    before = client.get_inference_statistics("simple_mlp", as_json=True)
    out = tmp_path / "perf.csv"
    env = dict(os.environ, LD_LIBRARY_PATH=str(TOOLS / "lib"))
    cmd = [
        str(PERF_ANALYZER),
        "-m",
        "simple_mlp",
        "-i",
        protocol,
        "-u",
        demo_server.grpc_url if protocol == "grpc" else demo_server.http_url,
        "-b",
        "1",
        "--async",
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "-p",
        "1500",
        "-s",
        "1000",
        "--max-trials",
        "3",
        "--shared-memory",
        shared_memory,
        "-f",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, f"perf_analyzer failed:\n{proc.stdout}\n{proc.stderr}"
    rows = list(csv.DictReader(out.open()))
    assert rows, proc.stdout
    row = rows[0]
    throughput = float(row["Inferences/Second"])
    p50, p99 = int(row["p50 latency"]), int(row["p99 latency"])
    print(f"perf_analyzer {protocol} c={concurrency} shm={shared_memory}: {throughput:.0f} infer/s, p50 {p50} us, p99 {p99} us")
    assert throughput > 0
    if shared_memory != "none":  # it registered regions for the inputs and the output
        log = demo_server.wait_for_log("shared memory region")
        registered = [line for line in log.splitlines() if "registered: key" in line]
        assert len(registered) >= 2, log
    after = client.get_inference_statistics("simple_mlp", as_json=True)
    stats_before = before["model_stats"][0]["inference_stats"]
    stats_after = after["model_stats"][0]["inference_stats"]
    failed = int(stats_after.get("fail", {}).get("count", 0)) - int(
        stats_before.get("fail", {}).get("count", 0)
    )
    succeeded = int(stats_after["success"]["count"]) - int(
        stats_before.get("success", {}).get("count", 0)
    )
    assert failed == 0, f"server counted {failed} failed requests during the load"
    assert succeeded > 0
    client.close()
