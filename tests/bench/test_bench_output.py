"""Result documents: JSON shape, Markdown tables, comparison ratios, perf_analyzer parsing,
and the scenario files' loading and bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.harness import histogram as hdr
from bench.harness import results
from bench.harness.compare import comparison_markdown, comparison_rows
from bench.harness.loadgen import WorkerResult
from bench.harness.perf_analyzer import parse as parse_perf_analyzer
from bench.harness.runner import merge_step
from bench.harness.scenario import (SCENARIO_DIR, Scenario, ScenarioError, Step, load,
                                    parse_input_flag, with_overrides)

STEP_KEYS = {"step", "mode", "concurrency", "rate", "batch_size", "completed", "ok", "errors",
             "elapsed_s", "requests_per_s", "inferences_per_s", "latency_us", "server", "client"}
LATENCY_KEYS = {"count", "mean", "p50", "p90", "p99", "p99.9", "max"}


def _worker(latency_us: int, ok: int, errors=None, seconds: float = 2.0) -> WorkerResult:
    h = hdr.new_histogram()
    for _ in range(ok):
        hdr.record_ns(h, latency_us * 1000)
    return WorkerResult(ok=ok, errors=errors or {}, histogram=hdr.encode(h), max_us=latency_us,
                        elapsed_ns=int(seconds * 1e9), cpu_s=0.5, wall_s=2.0, sent=ok)


def _run(server: str, latency_us: int, ok: int, batch: int = 1) -> dict:
    scenario = Scenario(model="tiny_mlp", concurrency=(1, 16), batch_size=batch).validate()
    steps = [merge_step(Step(concurrency=c), scenario,
                        [_worker(latency_us * c, ok, {"RESOURCE_EXHAUSTED": 3} if c == 16 else {})],
                        {"requests": ok, "failed": 0, "queue_us": 10.0, "compute_us": 5.0,
                         "compute_infer_us": 4.0, "mean_batch": 1.0})
             for c in (1, 16)]
    return {"server": server, "url": "127.0.0.1:1", "driver": "harness", "status": "ok",
            "model": "tiny_mlp", "inputs": [], "scenario": scenario.to_dict(), "steps": steps}


def test_step_row_numbers():
    scenario = Scenario(model="m", concurrency=(4,), batch_size=8).validate()
    row = merge_step(Step(concurrency=4), scenario,
                     [_worker(500, 1000, {"UNAVAILABLE": 2}), _worker(700, 1000, seconds=2.5)], None)
    assert set(row) == STEP_KEYS
    assert set(row["latency_us"]) == LATENCY_KEYS
    assert (row["ok"], row["completed"], row["errors"]) == (2000, 2002, {"UNAVAILABLE": 2})
    assert row["elapsed_s"] == 2.5  # the longest worker window
    assert row["requests_per_s"] == 800.0
    assert row["inferences_per_s"] == 6400.0  # x batch size 8
    assert row["latency_us"]["p50"] == pytest.approx(500, rel=hdr.RELATIVE_ERROR)
    assert row["latency_us"]["max"] == 700
    assert row["client"]["workers"] == 2 and row["client"]["cpu_cores"] == 0.5


def test_json_markdown_and_png_written(tmp_path):
    runs = [_run("tensorgate", 400, 2000), _run("echo", 300, 2600),
            results.not_run("pytriton", "not available: no virtualenv at bench/.venvs/pytriton",
                            "tiny_mlp")]
    ceiling = {"tiny_mlp": {1: {"rows_per_s": 150_000.0, "us_per_call": 6.7},
                            64: {"rows_per_s": 900_000.0, "us_per_call": 71.1}}}
    rows = comparison_rows(runs, ceiling)
    doc = results.document(runs, ceiling=ceiling, comparison=rows,
                           comparison_markdown=comparison_markdown(rows))
    paths = results.write(doc, tmp_path / "out", "test")
    assert set(paths) == {"json", "markdown", "png"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    loaded = json.loads(paths["json"].read_text())
    assert loaded["schema"] == results.SCHEMA
    assert {"cpu", "cores", "python", "packages"} <= set(loaded["machine"])
    assert [r["server"] for r in loaded["runs"]] == ["tensorgate", "echo", "pytriton"]
    for run in loaded["runs"][:2]:
        for step in run["steps"]:
            assert set(step) == STEP_KEYS and set(step["latency_us"]) == LATENCY_KEYS
    assert loaded["runs"][2]["status"].startswith("not available: ")

    md = paths["markdown"].read_text()
    header = "| " + " | ".join(results.STEP_COLUMNS) + " |"
    lines = md.splitlines()
    assert header in lines
    step_rows = [line for line in lines[lines.index(header) + 2:] if line.startswith("|")]
    assert len(step_rows) == 5  # 2 steps x 2 servers + the unavailable one
    assert all(row.count("|") == len(results.STEP_COLUMNS) + 1 for row in step_rows)
    assert "not available: no virtualenv" in md
    assert "RESOURCE_EXHAUSTED 3" in md


def test_comparison_ratios_are_tensorgate_over_peer():
    runs = [_run("tensorgate", 400, 2000), _run("echo", 200, 1000)]
    ceiling = {"tiny_mlp": {64: {"rows_per_s": 8000.0, "us_per_call": 10.0}}}
    rows = {(r["server"], r["step"]): r for r in comparison_rows(runs, ceiling)}
    echo = rows[("echo", "c=1")]
    assert echo["tg_over_peer_throughput"] == 2.0  # 1000 vs 500 infer/s
    assert echo["tg_over_peer_p50"] == pytest.approx(2.0, rel=0.01)  # 400 vs 200 µs
    assert rows[("tensorgate", "c=16")]["tg_over_peer_throughput"] == 1.0
    ceiling_row = rows[("inprocess (ORT) b=64", "batch 64")]
    assert ceiling_row["tg_over_peer_throughput"] == 0.125  # best TG step 1000 / 8000
    md = comparison_markdown(list(rows.values()))
    assert "| tiny_mlp | echo (harness) | c=1 | 500 |" in md and "2.00x" in md


PA_CSV = """Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
4,1136.02,3,3028,298,6,79,3,0,1857,4150,9244,25581
"""
PA_STDOUT = """Request concurrency: 4
  Client:
    Request count: 4133
    Throughput: 1136.02 infer/sec
    Avg latency: 3420 usec (standard deviation 9495 usec)
  Server:
    Inference count: 4136
    Execution count: 3523
    Successful request count: 4136
"""


def test_perf_analyzer_output_becomes_a_step_row():
    scenario = Scenario(model="m", concurrency=(4,)).validate()
    row = parse_perf_analyzer(PA_CSV, PA_STDOUT, Step(concurrency=4), scenario)
    assert set(row) == STEP_KEYS and set(row["latency_us"]) == LATENCY_KEYS
    assert row["inferences_per_s"] == 1136.0 and row["ok"] == 4133
    assert (row["latency_us"]["p50"], row["latency_us"]["p99"]) == (1857, 25581)
    assert row["latency_us"]["p99.9"] is None  # perf_analyzer doesn't report it
    assert row["server"]["queue_us"] == 298 and row["server"]["compute_us"] == 88
    assert row["server"]["mean_batch"] == pytest.approx(4136 / 3523, abs=0.01)


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.*")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path: Path):
    scenario = load(path).validate()
    assert scenario.steps()
    assert scenario.duration_s <= 10 and scenario.warmup_s <= 5  # bounded, short


def test_scenario_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "concurrency": [1], "duraton_s": 5}))
    with pytest.raises(ScenarioError, match="duraton_s"):
        load(bad)
    base = Scenario(model="m", concurrency=(1,))
    with pytest.raises(ScenarioError, match="duration_s"):
        with_overrides(base, duration_s=10_000)
    with pytest.raises(ScenarioError, match="concurrency"):
        with_overrides(base, concurrency=(0,))
    with pytest.raises(ScenarioError, match="lowercase"):
        with_overrides(base, headers={"X-Token": "t"})
    # A flag picks the mode: rates replace the file's concurrency levels.
    assert with_overrides(base, rates=(50.0,)).steps() == [Step(rate=50.0)]
    name, spec = parse_input_flag("INPUT0:fp32:3,64,64")
    assert (name, spec.datatype, spec.shape) == ("INPUT0", "FP32", (3, 64, 64))
