"""``tensorgate_client.Client`` against a live ``tensorgate serve`` (demo repository):
every RPC it wraps, the demo models' datatypes both ways, errors, deadlines, streams."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from clients_support import import_client, reference_input

import_client()
from tensorgate_client import Client, TensorGateError  # noqa: E402


@pytest.fixture(scope="module")
def client(server):
    with Client(server.grpc_url, timeout=10.0) as c:
        yield c


def _code(exc_info) -> grpc.StatusCode:
    return exc_info.value.code


# -- server and model RPCs ---------------------------------------------------------------


def test_health_and_readiness(client):
    assert client.is_live() is True
    assert client.is_ready() is True
    assert client.model_ready("simple_mlp") is True
    assert client.model_ready("simple_mlp", "1") is True
    assert client.model_ready("no_such_model") is False


def test_metadata_and_config(client):
    meta = client.server_metadata()
    assert meta.name == "tensorgate" and "model_repository" in meta.extensions
    model = client.model_metadata("simple_mlp")
    assert model.versions == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("INPUT0", "FP32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("OUTPUT0", "FP32", [-1, 8])]
    config = client.model_config("simple_mlp")
    assert config.name == "simple_mlp" and config.max_batch_size == 64


def test_repository_index(client):
    entries = {(e.name, e.version, e.state) for e in client.repository_index()}
    assert {("simple_mlp", "1", "READY"), ("multi_io", "1", "READY"), ("text_lower", "1", "READY")} <= entries
    assert {e.name for e in client.repository_index(ready_only=True)} >= {"simple_mlp"}


def test_statistics_count_inferences(client):
    def count() -> int:
        (stats,) = client.model_statistics("multi_io", "1")
        return stats.inference_stats.success.count

    before = count()
    for _ in range(3):
        client.infer("multi_io", _multi_io_inputs())
    assert count() == before + 3
    assert {s.name for s in client.model_statistics()} >= {"simple_mlp", "multi_io", "text_lower"}


def test_unload_then_load(client):
    text = np.array([b"A"], dtype=object)
    client.unload_model("text_lower")
    try:
        assert client.model_ready("text_lower") is False
        with pytest.raises(TensorGateError) as err:
            client.infer("text_lower", {"TEXT": text})
        assert _code(err) == grpc.StatusCode.UNAVAILABLE
    finally:
        client.load_model("text_lower")
    assert client.model_ready("text_lower") is True
    assert client.infer("text_lower", {"TEXT": text})["TEXT_LOWER"].tolist() == [b"a"]


def test_load_unknown_model_is_not_found(client):
    with pytest.raises(TensorGateError) as err:
        client.load_model("no_such_model")
    assert _code(err) == grpc.StatusCode.NOT_FOUND and err.value.message


# -- inference: the demo models' datatypes, both ways ------------------------------------


def test_simple_mlp_matches_tritonclient(client, server):
    import tritonclient.grpc as grpcclient  # the reference client, in the same process

    x = reference_input()
    ours = client.infer("simple_mlp", {"INPUT0": x})
    assert list(ours) == ["OUTPUT0"]
    assert ours["OUTPUT0"].dtype == np.float32 and ours["OUTPUT0"].shape == (2, 8)
    triton = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        expected = triton.infer("simple_mlp", [inp]).as_numpy("OUTPUT0")
    finally:
        triton.close()
    np.testing.assert_array_equal(ours["OUTPUT0"], expected)
    # Batch rows are independent: row 1 alone gives row 1 of the batch.
    np.testing.assert_array_equal(client.infer("simple_mlp", {"INPUT0": x[1:]})["OUTPUT0"], expected[1:])


def _multi_io_inputs():
    return {
        "FEATURES": np.array([[0.5, -1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]], np.float32),
        "COUNTS": np.array([[1, 2, -3, 2**40], [0, 5, 6, 7]], np.int64),
        "MASK": np.array([[True, False, True, True], [False, False, False, False]]),
    }


def test_multi_io_fp32_int64_bool_in_fp64_int32_bool_out(client):
    inputs = _multi_io_inputs()
    out = client.infer("multi_io", inputs)
    assert {k: v.dtype for k, v in out.items()} == {
        "WEIGHTED": np.float64, "MASKED_COUNTS": np.int32, "ANY_MASKED": np.bool_
    }  # fmt: skip
    np.testing.assert_array_equal(
        out["WEIGHTED"], inputs["FEATURES"].astype(np.float64) * inputs["COUNTS"]
    )
    masked = np.where(inputs["MASK"], inputs["COUNTS"], 0).astype(np.int32)
    np.testing.assert_array_equal(out["MASKED_COUNTS"], masked)
    np.testing.assert_array_equal(out["ANY_MASKED"], [[True], [False]])


def test_outputs_picks_a_subset(client):
    out = client.infer("multi_io", _multi_io_inputs(), outputs=["ANY_MASKED"])
    assert list(out) == ["ANY_MASKED"]


@pytest.mark.parametrize(
    "text",
    [
        np.array([b"Hello", b"", b"MiXeD 123", b"caf\xc3\xa9 OK"], dtype=object),
        np.array(["Str", "ASCII ONLY"], dtype=object),
        np.array([b"FIXED", b"W"], dtype="S5"),
    ],
    ids=["bytes", "str", "S-dtype"],
)
def test_text_lower_bytes_both_ways(client, text):
    out = client.infer("text_lower", {"TEXT": text})
    expected = [
        (t if isinstance(t, bytes) else t.encode()).translate(
            bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
        )
        for t in text.tolist()
    ]
    assert out["TEXT_LOWER"].dtype == object and out["TEXT_LOWER"].tolist() == expected
    assert out["LENGTH"].tolist() == [len(text)]


def test_route_key_is_accepted(client):
    # The server ignores route keys today; sending one must not change the answer.
    x = reference_input()
    plain = client.infer("simple_mlp", {"INPUT0": x})
    routed = client.infer("simple_mlp", {"INPUT0": x}, route_key="tenant-7", version="1")
    np.testing.assert_array_equal(plain["OUTPUT0"], routed["OUTPUT0"])


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "inputs", "code", "needle"),
    [
        ("no_such_model", {"INPUT0": np.zeros((1, 16), np.float32)}, "NOT_FOUND", "no_such_model"),
        ("simple_mlp", {"INPUT0": np.zeros((1, 16), np.float64)}, "INVALID_ARGUMENT", "INPUT0"),
        ("simple_mlp", {"INPUT0": np.zeros((1, 15), np.float32)}, "INVALID_ARGUMENT", "INPUT0"),
        ("simple_mlp", {"WRONG": np.zeros((1, 16), np.float32)}, "INVALID_ARGUMENT", ""),
    ],
    ids=["unknown-model", "wrong-dtype", "wrong-shape", "unknown-input"],
)
def test_errors_carry_the_servers_code_and_message(client, model, inputs, code, needle):
    with pytest.raises(TensorGateError) as err:
        client.infer(model, inputs)
    assert err.value.code == getattr(grpc.StatusCode, code)
    assert needle in err.value.message and err.value.message


def test_unknown_version_is_not_found(client):
    with pytest.raises(TensorGateError) as err:
        client.infer("simple_mlp", {"INPUT0": reference_input()}, version="9")
    assert _code(err) == grpc.StatusCode.NOT_FOUND


def test_deadline_exceeded(client):
    # Far too short to connect, send and run: DEADLINE_EXCEEDED, from gRPC or from the
    # client's own check before sending (tests/clients/test_client_transport.py has a
    # server that is too slow, the case where the request went out).
    with pytest.raises(TensorGateError) as err:
        client.infer("simple_mlp", {"INPUT0": reference_input()}, timeout=1e-6)
    assert _code(err) == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_bad_timeout_is_refused_locally(client):
    with pytest.raises(ValueError, match="timeout"):
        client.is_live(timeout=-1)


# -- streaming ---------------------------------------------------------------------------


def test_stream_infer_answers_every_request(client):
    x = reference_input()
    expected = client.infer("simple_mlp", {"INPUT0": x})["OUTPUT0"]
    requests = [{"INPUT0": x[i % 2 : i % 2 + 1]} for i in range(6)]
    results = list(client.stream_infer("simple_mlp", requests, route_key="k"))
    assert sorted(r.id for r in results) == [str(i) for i in range(6)]
    for r in results:
        assert r.ok, r.error
        row = int(r.id) % 2
        np.testing.assert_array_equal(r.outputs["OUTPUT0"], expected[row : row + 1])


def test_stream_goes_on_after_a_bad_request(client):
    x = reference_input()
    requests = [{"INPUT0": x}, {"INPUT0": np.zeros((1, 3), np.float32)}, {"INPUT0": x}]
    results = list(client.stream_infer("simple_mlp", requests))
    failed = [r for r in results if not r.ok]
    assert len(results) == 3 and len(failed) == 1
    assert "INPUT0" in failed[0].error and failed[0].outputs is None
    assert sorted(r.id for r in results if r.ok) == ["0", "2"]


def test_stream_raises_what_the_request_iterable_raised(client):
    def requests():
        yield {"INPUT0": reference_input()}
        raise RuntimeError("source broke")

    seen = []
    with pytest.raises(RuntimeError, match="source broke"):
        for result in client.stream_infer("simple_mlp", requests()):
            seen.append(result)
    assert [r.id for r in seen] == ["0"]  # the response already due still came


def test_stream_to_unknown_model_yields_errors(client):
    results = list(client.stream_infer("no_such_model", [{"INPUT0": reference_input()}]))
    assert len(results) == 1 and "no_such_model" in results[0].error
