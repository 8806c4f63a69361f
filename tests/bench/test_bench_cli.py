"""End to end: ``python -m bench run`` against a real ``tensorgate serve`` (demo model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Not ``from conftest import ROOT``: when several test directories run in one pytest
# invocation, the name ``conftest`` is whichever directory's conftest loaded last.
ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from e2e_support import start_server  # noqa: E402  (tests/e2e is not a package)


@pytest.mark.timeout(90)
def test_run_against_tensorgate_writes_results(tmp_path):
    out = tmp_path / "out"
    with start_server(None) as server:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "run", "--url", server.grpc_url,
             "--model", "simple_mlp", "--concurrency", "1,4", "--warmup", "0.3",
             "--duration", "1", "--quiet", "--server-name", "tensorgate",
             "--server-pid", str(server.proc.pid), "--output", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=80)
        unknown = subprocess.run(
            [sys.executable, "-m", "bench", "run", "--url", server.grpc_url, "--model", "nope",
             "--concurrency", "1", "--duration", "1", "--quiet"],
            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    (run,) = doc["runs"]
    assert run["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16],
                              "batched": True}]  # from ModelMetadata + ModelConfig
    assert [s["step"] for s in run["steps"]] == ["c=1", "c=4"]
    for step in run["steps"]:
        assert step["ok"] > 0 and step["errors"] == {}
        assert 0 < step["latency_us"]["p50"] <= step["latency_us"]["p99"] <= step["latency_us"]["max"]
        # TensorGate keeps ModelStatistics: the server's split is there, and it served
        # at least what we counted (warm-up requests are in its delta too).
        assert step["server"]["requests"] >= step["ok"]
        assert step["server"]["compute_us"] > 0
        assert step["server_cpu"]["cores"] > 0
    assert (out / "results.md").exists() and (out / "latency.png").exists()
    assert "| tensorgate | simple_mlp | c=1 |" in proc.stdout
    # An unknown model fails at once, with the server's message, no traceback.
    assert unknown.returncode == 1, unknown.stderr
    assert "nope" in unknown.stderr and "Traceback" not in unknown.stderr


def test_non_loopback_url_is_refused():
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--url", "10.1.2.3:8001",
                           "--model", "m", "--concurrency", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not loopback" in proc.stderr
