"""Prediction logs against the real server: rows land in Parquet with the right fields
and values (read back with pyarrow after SIGTERM, which flushes them), the sample ratio
and its per-model override, inputs dropped and hashed, routes and trace ids, and a flood
past a tiny buffer that drops captures (counted on /metrics) without failing a request.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from e2e_support import (  # noqa: E402
    infer_input, metric_value, scrape, start_server, status_of,
)
from routes_support import Caller, route  # noqa: E402
from tensorgate.observability import prediction_log as plog  # noqa: E402
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb  # noqa: E402

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED_RATIO = 0.25
SAMPLED_REQUESTS = 400


def _identity_config(parameters: dict[str, str]) -> str:
    text = (
        "max_batch_size: 8\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },\n'
        '         { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ -1 ] } ]\n'
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
    )
    return text + _parameters(parameters)


def _parameters(parameters: dict[str, str]) -> str:
    return "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in parameters.items()
    )


@pytest.fixture(scope="module")
def repo(test_repo, tmp_path_factory) -> Path:
    """plain (every request logged), sampled (its own ratio), never (ratio 0), private
    (add_sub: INPUT0 hashed, INPUT1 dropped), text (BYTES identity)."""
    root = tmp_path_factory.mktemp("plog") / "repo"
    root.mkdir()
    for name, source, config in (
        ("plain", "identity_fp32", _identity_config({})),
        ("sampled", "identity_fp32",
         _identity_config({"prediction_log_sample_ratio": str(SAMPLED_RATIO)})),
        ("never", "identity_fp32", _identity_config({"prediction_log_sample_ratio": "0"})),
        ("private", "add_sub", "max_batch_size: 8\n" + _parameters(
            {"prediction_log_hash": "INPUT0", "prediction_log_drop": "INPUT1"})),
        ("text", "identity_bytes", None),
    ):
        shutil.copytree(test_repo / source / "1", root / name / "1")
        if config is None:
            text = (test_repo / source / "config.pbtxt").read_text()
            config = re.sub(r'^name: "[^"]*"\n', "", text, count=1)
        (root / name / "config.pbtxt").write_text(config)
    return root


def _rows(directory: Path, model: str) -> list[dict] | None:
    """Every logged row of ``model`` (finished files only); None without any file."""
    folder = directory / model
    if not folder.exists():
        return None
    return pq.read_table(folder).to_pylist()


@pytest.fixture(scope="module")
def logged(repo, tmp_path_factory):
    """One server's traffic, its log directory read back after SIGTERM."""
    directory = tmp_path_factory.mktemp("plog") / "logs"
    sent: dict = {}
    with start_server(repo, "--prediction-log-dir", str(directory)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        rng = np.random.default_rng(7)
        sent["plain"] = {}
        for i in range(5):
            x = rng.standard_normal((i % 3 + 1, 4)).astype(np.float32)
            client.infer("plain", [infer_input("INPUT0", x)], request_id=f"p-{i}")
            sent["plain"][f"p-{i}"] = x
        x = np.arange(3, dtype=np.float32).reshape(1, 3)
        client.infer("plain", [infer_input("INPUT0", x)], request_id="traced",
                     headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
        sent["plain"]["traced"] = x
        with pytest.raises(InferenceServerException) as err:  # wrong datatype
            client.infer("plain", [infer_input("INPUT0", np.ones((1, 2), np.int32))],
                         request_id="bad")
        assert status_of(err.value) == "INVALID_ARGUMENT"
        a = rng.standard_normal((2, 16)).astype(np.float32)
        b = rng.standard_normal((2, 16)).astype(np.float32)
        client.infer("private", [infer_input("INPUT0", a), infer_input("INPUT1", b)],
                     request_id="secret")
        sent["private"] = (a, b)
        words = np.array([[b"alpha", b"", "é".encode()]], dtype=object)
        client.infer("text", [infer_input("INPUT0", words, "BYTES")], request_id="t-0")
        sent["text"] = words
        one = np.ones((1, 1), np.float32)

        def sampled(i: int) -> None:
            client.infer("sampled", [infer_input("INPUT0", one)], request_id=f"s-{i}")

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(sampled, range(SAMPLED_REQUESTS)))
        for i in range(20):
            client.infer("never", [infer_input("INPUT0", one)], request_id=f"n-{i}")
        caller = Caller(server.grpc_url)
        caller.control.SetRoute(cpb.SetRouteRequest(route=route("ab", ("plain", "", 100))),
                                timeout=10)
        caller.close()
        for i in range(3):
            client.infer("ab", [infer_input("INPUT0", one)], request_id=f"r-{i}")
        client.close()
        assert server.stop() == 0  # SIGTERM: the buffered rows are written before exit
    return directory, sent


@pytest.mark.timeout(90)
def test_rows_hold_the_requests_fields_and_tensors(logged):
    directory, sent = logged
    files = sorted(directory.glob("plain/*/part-*.parquet"))
    assert files and not list(directory.rglob("*.tmp"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", files[0].parent.name)
    rows = {row["request_id"]: row for row in _rows(directory, "plain")}
    for request_id, x in sent["plain"].items():
        row = rows[request_id]
        assert row["model"] == "plain" and row["version"] == "1" and row["status"] == "OK"
        assert row["route"] is None and row["variant"] is None
        assert row["latency_us"] >= 0 and row["timestamp"].year >= 2024
        assert row["input_shape.INPUT0"] == list(x.shape)
        assert row["input.INPUT0"] == x.tobytes()  # v2 raw bytes
        out = np.frombuffer(row["output.OUTPUT1"], "<f4").reshape(row["output_shape.OUTPUT1"])
        np.testing.assert_array_equal(out, x)
    assert rows["traced"]["trace_id"] == TRACE and rows["p-0"]["trace_id"] is None
    bad = rows["bad"]  # failed validation: logged with its status, no tensors
    assert bad["status"] == "INVALID_ARGUMENT"
    assert bad["input.INPUT0"] is None and bad["output.OUTPUT0"] is None
    routed = [row for row in rows.values() if row["route"] == "ab"]
    assert sorted(row["request_id"] for row in routed) == ["r-0", "r-1", "r-2"]
    assert {row["variant"] for row in routed} == {"plain:default"}


@pytest.mark.timeout(90)
def test_the_readme_join_with_labels(logged):
    """README, Prediction logs: rows joined with labels by request id, then a score."""
    pd = pytest.importorskip("pandas")
    directory, sent = logged
    labels = pd.DataFrame({"request_id": [f"p-{i}" for i in range(5)],
                           "label": [0, 1, 2, 0, 1]})
    logs = pq.read_table(directory / "plain").to_pandas()
    joined = logs.merge(labels, on="request_id")
    first = [np.frombuffer(b, "<f4")[0] for b in joined["output.OUTPUT0"]]
    assert len(joined) == 5 and len(first) == 5
    assert sorted(joined["request_id"]) == sorted(labels["request_id"])


@pytest.mark.timeout(90)
def test_inputs_dropped_and_hashed(logged):
    directory, sent = logged
    a, b = sent["private"]
    table = pq.read_table(directory / "private")
    assert "input.INPUT1" not in table.column_names  # dropped: no trace of it
    assert not any("INPUT1" in c for c in table.column_names)
    assert "input.INPUT0" not in table.column_names  # hashed: the digest only
    (digest,) = table.column("input_blake2b.INPUT0").to_pylist()
    assert digest == hashlib.blake2b(a.tobytes()).hexdigest()
    (out,) = plog.tensors(table, "output.OUTPUT0")  # outputs are kept
    np.testing.assert_allclose(out, a + b, rtol=1e-6)


@pytest.mark.timeout(90)
def test_bytes_tensors(logged):
    directory, sent = logged
    table = pq.read_table(directory / "text")
    assert table.schema.field("input.INPUT0").metadata[b"datatype"] == b"BYTES"
    (values,) = plog.tensors(table, "input.INPUT0")
    assert values.tolist() == sent["text"].tolist()


@pytest.mark.timeout(90)
def test_sample_ratio_per_model(logged):
    directory, _ = logged
    n = len(_rows(directory, "sampled"))
    mean = SAMPLED_REQUESTS * SAMPLED_RATIO
    bound = 5 * (SAMPLED_REQUESTS * SAMPLED_RATIO * (1 - SAMPLED_RATIO)) ** 0.5
    assert abs(n - mean) <= bound, n
    assert _rows(directory, "never") is None  # ratio 0: not one file


@pytest.mark.timeout(90)
def test_flood_past_the_buffer_drops_and_counts_without_failing(repo, tmp_path):
    directory = tmp_path / "logs"
    with start_server(repo, "--prediction-log-dir", str(directory),
                      "--prediction-log-buffer-size", "1",
                      "--prediction-log-rotate-secs", "1") as server:
        one = np.ones((1, 8), np.float32)
        failures = []

        def work(k: int) -> int:
            client = grpcclient.InferenceServerClient(server.grpc_url)
            ok = 0
            for i in range(60):
                try:
                    client.infer("plain", [infer_input("INPUT0", one)], request_id=f"{k}-{i}")
                    ok += 1
                except InferenceServerException as exc:  # none expected
                    failures.append(exc)
            client.close()
            return ok

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            served = sum(pool.map(work, range(16)))
        text = scrape(server)
        assert server.stop() == 0
    assert not failures and served == 16 * 60
    captured = metric_value(text, "tensorgate_prediction_log_captured_total")
    dropped = metric_value(text, "tensorgate_prediction_log_dropped_total", reason="buffer_full")
    assert dropped > 0 and captured + dropped == served
    assert metric_value(text, "tensorgate_prediction_log_dropped_total", reason="write_error") == 0
    assert len(_rows(directory, "plain")) == captured  # every capture kept was written
    assert not list(directory.rglob("*.tmp"))
