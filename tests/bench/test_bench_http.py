"""The HTTP driver's pure parts: the v2 JSON body, wrk's command and Lua script, parsing
its report into a step row, the pre-step answer check, Triton's statistics JSON, and a
failed step in the comparison. No server, no wrk process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.harness import wrk
from bench.harness.compare import comparison_markdown, comparison_rows
from bench.harness.http_control import infer_answer_problem, stats_totals
from bench.harness.payload import InputSpec, build_json_body, json_body, make_arrays
from bench.harness.runner import failed_step
from bench.harness.scenario import InputOverride, Scenario, Step

# wrk 4.1's report with --latency, and the line our done() hook adds.
WRK_STDOUT = """Running 8s test @ http://127.0.0.1:8000/v2/models/tiny_mlp/infer
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.09ms  210.00us   6.09ms   90.00%
    Req/Sec    15.20k   400.00    16.00k    70.00%
  Latency Distribution
     50%    2.09ms
     75%    2.15ms
     90%    2.19ms
     99%    2.48ms
  241944 requests in 8.00s, 60.00MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  30243.00
Transfer/sec:      7.50MB
""" + "BENCH-WRK " + json.dumps({
    "requests": 241944, "duration_us": 8000000, "bytes": 62914560,
    "errors": {"connect": 0, "read": 2, "write": 0, "status": 12, "timeout": 1},
    "latency_us": {"mean": 2100.5, "p50": 2088, "p90": 2191, "p99": 2484, "p99.9": 5369,
                   "max": 6089}}, separators=(",", ":")) + "\n"


def _scenario(**kw) -> Scenario:
    kw.setdefault("concurrency", (1, 64))
    return Scenario(model="tiny_mlp", **kw).validate()


def test_json_body_is_v2_json_and_floats_round_trip_exactly():
    spec = InputSpec("INPUT0", "FP32", (1, 16), True)
    arr = np.random.default_rng(3).standard_normal((1, 16)).astype(np.float32)
    body = json.loads(json_body([spec], {"INPUT0": arr}, ("OUTPUT0",)))
    (tensor,) = body["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("INPUT0", [1, 16], "FP32")
    assert len(tensor["data"]) == 16  # flat, as every v2 server takes it
    assert np.array_equal(np.asarray(tensor["data"], np.float32).reshape(1, 16), arr)
    assert body["outputs"] == [{"name": "OUTPUT0"}]
    assert "outputs" not in json.loads(json_body([spec], {"INPUT0": arr}))


def test_json_body_other_datatypes():
    specs = [InputSpec("I", "INT64", (1, 3), True), InputSpec("T", "BYTES", (1, 2), True),
             InputSpec("B", "BOOL", (1, 2), True)]
    arrays = {"I": np.array([[1, -2, 3]], np.int64),
              "T": np.array([[b"ab", "é".encode()]], dtype=object),
              "B": np.array([[True, False]])}
    inputs = {t["name"]: t["data"] for t in json.loads(json_body(specs, arrays))["inputs"]}
    assert inputs == {"I": [1, -2, 3], "T": ["ab", "é"], "B": [True, False]}


def test_build_json_body_is_the_first_grpc_request():
    # The HTTP body carries the same tensor as the first of gRPC's distinct requests.
    scenario = _scenario(inputs={"INPUT0": InputOverride("FP32", (16,))}, seed=7)
    specs = [InputSpec("INPUT0", "FP32", (1, 16), True)]
    first = make_arrays(specs, "random", scenario.distinct_requests, scenario.seed)[0]["INPUT0"]
    data = json.loads(build_json_body(scenario, specs))["inputs"][0]["data"]
    assert np.array_equal(np.asarray(data, np.float32), first.ravel())


def test_command_threads_and_url():
    scenario = _scenario(version="2")
    one = wrk.command("wrk", "127.0.0.1:8000", scenario, Step(concurrency=1), "s.lua", 8)
    assert one[:7] == ["wrk", "-t", "1", "-c", "1", "-d", "8s"]
    assert one[-1] == "http://127.0.0.1:8000/v2/models/tiny_mlp/versions/2/infer"
    many = wrk.command("wrk", "127.0.0.1:8000", scenario, Step(concurrency=64), "s.lua", 8)
    assert many[1:5] == ["-t", "2", "-c", "64"] and "--latency" in many
    with pytest.raises(wrk.WrkError, match="closed-loop"):
        wrk.command("wrk", "127.0.0.1:8000", scenario, Step(rate=100.0), "s.lua", 8)


def test_lua_script_quotes_paths_and_headers_verbatim():
    script = wrk.lua_script("/tmp/a]]b/body.json", {"triton-access-token": "t]]k]=]"})
    assert "[=[/tmp/a]]b/body.json]=]" in script
    assert "wrk.headers[ [[triton-access-token]] ] = [==[t]]k]=]]==]" in script
    assert 'wrk.method = "POST"' in script and "function done(" in script
    assert wrk.MARKER in script


def test_parse_and_step_row():
    report = wrk.parse(WRK_STDOUT)
    assert report["requests"] == 241944 and report["latency_us"]["p99"] == 2484
    row = wrk.step_of(report, Step(concurrency=64), _scenario(), {"driver": "wrk"})
    # Non-2xx answers are in wrk's request count: taken out of ok, counted as errors.
    assert row["ok"] == 241944 - 12
    assert row["errors"] == {"HTTP_NON_2XX": 12, "SOCKET_READ": 2, "SOCKET_TIMEOUT": 1}
    assert row["requests_per_s"] == pytest.approx((241944 - 12) / 8, abs=0.1)
    assert row["elapsed_s"] == 8.0
    assert row["latency_us"]["p50"] == 2088 and row["latency_us"]["max"] == 6089
    assert row["client"]["response_bytes"] == 62914560
    with pytest.raises(wrk.WrkError, match="no BENCH-WRK"):
        wrk.parse("Running 8s test @ http://x\nunable to connect to 127.0.0.1:1\n")


def test_parse_no_requests():
    text = WRK_STDOUT.replace('"requests":241944', '"requests":0')
    row = wrk.step_of(wrk.parse(text), Step(concurrency=1), _scenario(), {"driver": "wrk"})
    assert row["latency_us"]["p50"] is None and row["latency_us"]["count"] == 0


def test_infer_answer_problem():
    good = json.dumps({"outputs": [{"name": "OUTPUT0", "shape": [1, 8], "data": [0] * 8}]})
    assert infer_answer_problem(200, good, ("OUTPUT0",)) is None
    assert infer_answer_problem(200, good, ()) is None
    assert "expected ['OUT1']" in infer_answer_problem(200, good, ("OUT1",))
    assert "HTTP 400: bad input" in infer_answer_problem(400, "bad input", ("OUTPUT0",))
    assert "not a v2 infer response" in infer_answer_problem(200, "<html>", ("OUTPUT0",))
    assert "expected an output" in infer_answer_problem(200, '{"outputs": []}', ())


def test_stats_totals_sum_versions_of_the_model():
    answer = {"model_stats": [
        {"name": "m", "version": "1", "inference_count": "10", "execution_count": 4,
         "inference_stats": {"success": {"count": 10, "ns": "5000"},
                             "queue": {"count": 10, "ns": 100}}},
        {"name": "m", "version": "2", "inference_count": 2, "execution_count": 2,
         "inference_stats": {"success": {"count": 2, "ns": 50}}},
        {"name": "other", "inference_count": 99, "execution_count": 99}]}
    totals = stats_totals(answer, "m")
    assert totals["inference_count"] == 12 and totals["execution_count"] == 6
    assert (totals["success_count"], totals["success_ns"]) == (12, 5050)
    assert totals["queue_ns"] == 100 and totals["compute_infer_count"] == 0
    assert stats_totals({"model_stats": []}, "m") is None and stats_totals(None, "m") is None


def test_failed_step_shows_in_the_comparison():
    scenario = _scenario(concurrency=(1,))
    report = wrk.parse(WRK_STDOUT)
    ok_row = wrk.step_of(report, Step(concurrency=1), scenario, {"driver": "wrk"})
    bad_row = failed_step(Step(concurrency=1), scenario, "POST infer: HTTP 500: boom", "wrk")
    runs = [{"server": "tensorgate", "model": "tiny_mlp", "driver": "wrk", "steps": [ok_row]},
            {"server": "kserve", "model": "tiny_mlp", "driver": "wrk", "steps": [bad_row]}]
    rows = comparison_rows(runs, {})
    assert rows[1]["status"] == "failed: POST infer: HTTP 500: boom"
    text = comparison_markdown(rows)
    assert "| tiny_mlp | kserve | c=1 | failed: POST infer: HTTP 500: boom |" in text
