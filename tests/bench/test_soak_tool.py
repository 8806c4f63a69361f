"""bench/soak.py: its memory-trend verdict, the server's heap endpoint it reads
(TENSORGATE_HEAP_DEBUG=1, GET /v2/debug/heap on the metrics port), and a short run with
every side load on."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import soak  # noqa: E402  (bench/soak.py, a script)
from e2e_support import server_env, start_server  # noqa: E402

HEAP_KEYS = {"tracemalloc", "top_sites", "gc", "malloc"}


def hour_of_samples(pct_per_hour: float, seed: int = 0) -> list[tuple[float, int]]:
    """(seconds, KiB) once a second for an hour: 100 MiB growing by ``pct_per_hour``
    of it per hour, with 1 MiB of noise (about what malloc's trimming shows)."""
    rng = np.random.default_rng(seed)
    t = np.arange(3600.0)
    mib = 100.0 * (1 + pct_per_hour / 100 * t / 3600) + rng.normal(0, 1.0, t.size)
    return [(float(s), int(m * 1024)) for s, m in zip(t, mib)]


def test_flat_memory_with_noise_passes():
    trend = soak.rss_trend(hour_of_samples(0.0), soak.warmup_seconds(3600))
    assert trend["samples"] == 3600 - 720
    assert abs(trend["slope_pct_per_h"]) < trend["ci95_pct_per_h"] * 2
    assert trend["ci95_pct_per_h"] < 0.5
    assert soak.judge_memory(trend, 1.0) == "PASS"


def test_five_percent_an_hour_fails_and_its_interval_holds_it():
    trend = soak.rss_trend(hour_of_samples(5.0, seed=1), soak.warmup_seconds(3600))
    # %/h of the fitted value at the end of the warm-up (100 MiB * 1.01), not of 100 MiB
    expected = 5.0 / 1.01
    assert abs(trend["slope_pct_per_h"] - expected) < trend["ci95_pct_per_h"]
    assert trend["slope_mib_per_h"] == pytest.approx(5.0, abs=0.5)
    assert trend["peak_mib"] >= trend["last_mib"] - 1e-9
    assert soak.judge_memory(trend, 1.0) == "FAIL"


@pytest.mark.parametrize("at", [0.25, 0.9])
def test_a_transient_burst_is_not_a_trend(at):
    # 10 minutes of +60..120 MiB (a queue that filled while the load generator caught
    # up, given back after): least squares reads tens of %/h, of the burst's sign by
    # where it fell; the verdict's slope, through minute medians, stays flat.
    samples = hour_of_samples(0.0, seed=2)
    start = int(3600 * at) - 300
    burst = [(t, kib + int((60 + 60 * ((t - start) % 7 == 0)) * 1024))
             if start <= t < start + 600 else (t, kib) for t, kib in samples]
    trend = soak.rss_trend(burst, soak.warmup_seconds(3600))
    assert abs(trend["slope_pct_per_h"]) > 5
    assert abs(trend["robust_slope_pct_per_h"]) < 1.0
    assert soak.judge_memory(trend, 1.0) == "PASS"
    growing = soak.rss_trend(hour_of_samples(5.0, seed=3), soak.warmup_seconds(3600))
    assert growing["robust_slope_mib_per_h"] == pytest.approx(5.0, abs=0.5)


def test_short_runs_are_not_judged():
    samples = hour_of_samples(50.0)[:40]
    trend = soak.rss_trend(samples, soak.warmup_seconds(40))
    assert trend["samples"] == 30 and "slope_pct_per_h" in trend
    assert soak.judge_memory(trend, 1.0) == "NOT_JUDGED"


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_heap_endpoint_absent_without_the_variable():
    with start_server(None, "--http-port", "-1") as server:
        status, _ = get(f"{server.metrics_url}/v2/debug/heap")
        assert status == 404
        assert "tracemalloc on" not in server.log
        assert get(f"{server.metrics_url}/metrics")[0] == 200


def test_heap_endpoint_with_the_variable():
    env = server_env(TENSORGATE_HEAP_DEBUG="1")
    with start_server(None, "--http-port", "-1", env=env) as server:
        base = f"{server.metrics_url}/v2/debug/heap"
        status, body = get(f"{base}?diff=1")
        assert status == 200
        report = json.loads(body)
        assert HEAP_KEYS <= report.keys() and report["marked"] is False
        assert report["tracemalloc"]["current_bytes"] > 0
        assert report["tracemalloc"]["frames"] == 1
        assert {"site", "size_bytes", "count"} <= report["top_sites"][0].keys()
        assert report["gc"]["by_type"]["dict"] > 0 and len(report["gc"]["by_type"]) <= 30
        marked = json.loads(get(f"{base}?mark=1&top=5")[1])
        assert marked["marked"] is True and len(marked["top_sites"]) == 5
        diff = json.loads(get(f"{base}?diff=1")[1])
        assert diff["marked"] is True
        assert {"growth_sites", "growth_types"} <= diff.keys()
        assert get(f"{base}?top=x")[0] == 400
        assert get(f"{server.metrics_url}/metrics")[0] == 200


@pytest.mark.timeout(60)
def test_short_soak_with_every_side_load(tmp_path):
    """~9 s of load at a low fixed rate (no capacity probe), so it stays under 40 s."""
    out = tmp_path / "soak.json"
    rss = tmp_path / "rss.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.15",
         "--rate", "200", "--protocol", "mixed", "--stream", "--stream-rate", "20",
         "--churn", "2", "--heap", "--json-out", str(out), "--rss-log", str(rss)],
        capture_output=True, text=True, timeout=120, env=server_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    req = result["requests"]
    assert req["errors"] == {} and req["not_sent"] == 0 and req["ok"] > 1000
    assert req["sent_by_protocol"]["grpc"] > 0 and req["sent_by_protocol"]["http"] > 0
    assert result["stream"]["errors"] == 0 and result["stream"]["lost"] == 0
    assert result["stream"]["answered"] > 50
    assert result["churn"]["failures"] == {} and result["churn"]["loads"] >= 2
    assert result["churn"]["unloads"] >= 1
    assert {"first_mib", "last_mib", "peak_mib", "slope_mib_per_h", "ci95_mib_per_h",
            "slope_pct_per_h", "ci95_pct_per_h"} <= result["memory"].keys()
    assert result["memory_verdict"] == "NOT_JUDGED" and result["verdict"] == "PASS"
    assert HEAP_KEYS | {"growth_sites", "growth_types"} <= result["heap"].keys()
    assert result["server_exit_code"] == 0
    assert rss.read_text().startswith("seconds,rss_kib\n")
