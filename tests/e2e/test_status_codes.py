"""DESIGN.md's status-code table, row by row, against the real server."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from e2e_support import build_models, infer_input, message_of, status_of


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _infer_error(client, model, inputs, **kwargs) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs, **kwargs)
    return err.value


def _stub_error(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=30)
    return err.value


def _request(model: str, *tensors, raw: list[bytes] | None = None) -> service_pb2.ModelInferRequest:
    """tensors: (name, datatype, shape) triples; raw: raw_input_contents."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=list(shape))
    request.raw_input_contents.extend(raw or [])
    return request


def _f32(*shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


# --------------------------------------------------------------------------- NOT_FOUND


def test_unknown_model(client):
    err = _infer_error(client, "no_such_model", [infer_input("INPUT0", _f32(1, 2))])
    assert status_of(err) == "NOT_FOUND"
    assert "no_such_model" in message_of(err)


def test_unknown_version(client):
    err = _infer_error(
        client, "identity_fp32", [infer_input("INPUT0", _f32(1, 2))], model_version="7"
    )
    assert status_of(err) == "NOT_FOUND"
    assert "7" in message_of(err)


def test_version_not_served_by_policy(client):
    err = _infer_error(client, "versioned", [infer_input("INPUT0", _f32(1, 1))], model_version="1")
    assert status_of(err) == "NOT_FOUND"


# --------------------------------------------------------------------------- INVALID_ARGUMENT


def test_wrong_datatype(client):
    err = _infer_error(client, "identity_fp32", [infer_input("INPUT0", np.ones((1, 2), np.int32))])
    assert status_of(err) == "INVALID_ARGUMENT"
    msg = message_of(err)
    assert "INPUT0" in msg and "FP32" in msg and "INT32" in msg, msg


def test_wrong_shape_fixed(client):
    err = _infer_error(client, "fixed_shape", [infer_input("INPUT0", _f32(3, 2))])
    assert status_of(err) == "INVALID_ARGUMENT"
    assert "INPUT0" in message_of(err)


def test_wrong_shape_feature_dim(client):
    err = _infer_error(
        client, "add_sub", [infer_input("INPUT0", _f32(1, 15)), infer_input("INPUT1", _f32(1, 16))]
    )
    assert status_of(err) == "INVALID_ARGUMENT"
    assert "INPUT0" in message_of(err)


def test_wrong_rank(client):
    err = _infer_error(client, "identity_fp32", [infer_input("INPUT0", _f32(1, 2, 3))])
    assert status_of(err) == "INVALID_ARGUMENT"
    assert "INPUT0" in message_of(err)


def test_batch_larger_than_max_batch_size(client):
    err = _infer_error(client, "identity_fp32", [infer_input("INPUT0", _f32(9, 2))])
    assert status_of(err) == "INVALID_ARGUMENT"
    assert message_of(err)
    # The largest allowed batch still works.
    ok = client.infer("identity_fp32", [infer_input("INPUT0", _f32(8, 2))])
    np.testing.assert_array_equal(ok.as_numpy("OUTPUT0"), _f32(8, 2))


def test_wrong_raw_byte_size(stub):
    err = _stub_error(stub, _request("identity_fp32", ("INPUT0", "FP32", [2, 3]), raw=[b"\0" * 20]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_raw_contents_count_mismatch(stub):
    request = _request("identity_fp32", ("INPUT0", "FP32", [1, 1]), raw=[b"\0" * 4, b"\0" * 4])
    assert _stub_error(stub, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_missing_input(client):
    err = _infer_error(client, "add_sub", [infer_input("INPUT0", _f32(1, 16))])
    assert status_of(err) == "INVALID_ARGUMENT"
    assert "INPUT1" in message_of(err)


def test_unknown_input(client):
    inputs = [infer_input(n, _f32(1, 16)) for n in ("INPUT0", "INPUT1", "EXTRA")]
    err = _infer_error(client, "add_sub", inputs)
    assert status_of(err) == "INVALID_ARGUMENT"
    assert "EXTRA" in message_of(err)


def test_unknown_requested_output(client):
    err = _infer_error(
        client,
        "identity_fp32",
        [infer_input("INPUT0", _f32(1, 2))],
        outputs=[grpcclient.InferRequestedOutput("NOPE")],
    )
    assert status_of(err) == "INVALID_ARGUMENT"
    assert "NOPE" in message_of(err)


def test_raw_and_typed_in_one_tensor(stub):
    request = _request("identity_fp32", ("INPUT0", "FP32", [1, 2]), raw=[_f32(1, 2).tobytes()])
    request.inputs[0].contents.fp32_contents.extend([0.0, 1.0])
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_raw_and_typed_across_tensors(stub):
    # One input typed, the other raw: a request-level mistake, so the message need not
    # name one tensor, but it must say what is wrong.
    request = _request("add_sub", ("INPUT0", "FP32", [1, 16]), ("INPUT1", "FP32", [1, 16]))
    request.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    request.raw_input_contents.append(_f32(1, 16).tobytes())
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw" in err.details().lower() or "INPUT0" in err.details(), err.details()


def test_typed_wrong_element_count(stub):
    request = _request("identity_fp32", ("INPUT0", "FP32", [2, 3]))
    request.inputs[0].contents.fp32_contents.extend([1.0] * 5)
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_typed_wrong_field_for_datatype(stub):
    request = _request("identity_fp32", ("INPUT0", "FP32", [1, 2]))
    request.inputs[0].contents.int_contents.extend([1, 2])
    err = _stub_error(stub, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_no_contents_at_all(stub):
    err = _stub_error(stub, _request("identity_fp32", ("INPUT0", "FP32", [1, 2])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_unknown_datatype_string(stub):
    err = _stub_error(
        stub, _request("identity_fp32", ("INPUT0", "FLOAT99", [1, 2]), raw=[b"\0" * 8])
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_negative_dimension(stub):
    err = _stub_error(stub, _request("identity_fp32", ("INPUT0", "FP32", [1, -2]), raw=[b"\0" * 8]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_bytes_length_prefix_past_the_end(stub):
    raw = (16).to_bytes(4, "little") + b"ab"
    err = _stub_error(stub, _request("identity_bytes", ("INPUT0", "BYTES", [1, 1]), raw=[raw]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_bytes_element_count_mismatch(stub):
    raw = (2).to_bytes(4, "little") + b"ab"
    err = _stub_error(stub, _request("identity_bytes", ("INPUT0", "BYTES", [1, 2]), raw=[raw]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in err.details()


def test_bytes_truncated_prefix(stub):
    err = _stub_error(
        stub, _request("identity_bytes", ("INPUT0", "BYTES", [1, 1]), raw=[b"\x01\x00"])
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- UNAVAILABLE


@pytest.mark.parametrize("model", build_models.BAD_TEST_MODELS)
def test_model_that_failed_to_load_is_unavailable(client, model):
    err = _infer_error(client, model, [infer_input("INPUT0", _f32(1, 4))])
    assert status_of(err) == "UNAVAILABLE", err


def test_corrupt_model_beside_good_ones(client):
    index = {(e.name, e.state) for e in client.get_model_repository_index().models}
    assert ("corrupt_model", "UNAVAILABLE") in index
    for name in build_models.GOOD_TEST_MODELS:
        assert client.is_model_ready(name), name
    result = client.infer("identity_fp32", [infer_input("INPUT0", _f32(2, 2))])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _f32(2, 2))


# --------------------------------------------------------------------------- INTERNAL


def test_runtime_failure_is_internal_and_server_recovers(client):
    x = _f32(2, 4)
    bad = _infer_error(
        client,
        "runtime_error",
        [infer_input("INPUT0", x), infer_input("INDICES", np.array([[0], [99]], np.int64))],
    )
    assert status_of(bad) == "INTERNAL"
    assert "gather" in message_of(bad).lower(), message_of(bad)  # the runtime's own message
    good = client.infer(
        "runtime_error",
        [infer_input("INPUT0", x), infer_input("INDICES", np.array([[1], [3]], np.int64))],
    )
    np.testing.assert_array_equal(good.as_numpy("OUTPUT0"), [[1.0], [7.0]])


# --------------------------------------------------------------------------- DEADLINE, RESOURCE


def _counts(client, model: str) -> tuple[int, int, int]:
    """(successful requests, executions, inferences) so far."""
    (stats,) = client.get_inference_statistics(model).model_stats
    return stats.inference_stats.success.count, stats.execution_count, stats.inference_count


@pytest.mark.timeout(60)
def test_deadline_exceeded_in_queue(client):
    # slow_queue holds a lone request for 3 s (preferred batch 8, max delay 3 s).
    before = _counts(client, "slow_queue")
    t0 = time.monotonic()
    err = _infer_error(
        client, "slow_queue", [infer_input("INPUT0", _f32(1, 1))], client_timeout=0.5
    )
    assert status_of(err) == "DEADLINE_EXCEEDED"
    assert time.monotonic() - t0 < 2.5
    # The expired request leaves the queue: it must not run when the batch window closes.
    time.sleep(3.5)
    assert _counts(client, "slow_queue") == before
    assert client.is_server_live()


@pytest.mark.timeout(60)
def test_queue_full_is_resource_exhausted(server):
    import tritonclient.grpc.aio as aioclient

    async def one(c, i: int, delay: float):
        await asyncio.sleep(delay)
        t0 = time.monotonic()
        try:
            result = await c.infer(
                "slow_queue", [infer_input("INPUT0", np.full((1, 1), i, np.float32))]
            )
            return i, "OK", result.as_numpy("OUTPUT0"), time.monotonic() - t0
        except InferenceServerException as exc:
            return i, status_of(exc), None, time.monotonic() - t0

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            return await asyncio.wait_for(
                asyncio.gather(one(c, 1, 0.0), one(c, 2, 0.2), one(c, 3, 0.6)), 30
            )

    outcomes = asyncio.run(run())
    statuses = sorted(s for _, s, _, _ in outcomes)
    assert statuses == ["OK", "OK", "RESOURCE_EXHAUSTED"], outcomes
    (rejected,) = [o for o in outcomes if o[1] == "RESOURCE_EXHAUSTED"]
    assert rejected[0] == 3  # the one that found the queue full
    assert rejected[3] < 1.0  # refused at once, not after the batch window
    for i, status, value, _ in outcomes:
        if status == "OK":
            np.testing.assert_array_equal(value, np.full((1, 1), i, np.float32))


@pytest.mark.timeout(60)
def test_cancelled_requests_leave_the_queue(server, stub, client):
    """slow_queue holds requests for 3 s and admits 2: two requests cancelled by their
    client must free their places at once, so two new ones are admitted, not refused."""
    def request(value: float):
        return _request(
            "slow_queue", ("INPUT0", "FP32", [1, 1]),
            raw=[np.full((1, 1), value, np.float32).tobytes()],
        )

    before = _counts(client, "slow_queue")
    doomed = [stub.ModelInfer.future(request(i), timeout=30) for i in (1, 2)]
    time.sleep(0.5)  # both are queued now (the window is 3 s)
    for call in doomed:
        call.cancel()
    time.sleep(0.3)
    kept = [stub.ModelInfer.future(request(i), timeout=30) for i in (3, 4)]
    for value, call in zip((3, 4), kept):
        response = call.result()  # RESOURCE_EXHAUSTED here would mean the slots leaked
        got = np.frombuffer(response.raw_output_contents[0], np.float32)
        assert got.tolist() == [value]
    for call in doomed:
        assert call.cancelled()
    # The cancelled requests never ran: only the two kept rows were inferred.
    after = _counts(client, "slow_queue")
    assert after[2] - before[2] == 2, (before, after)


def test_server_still_live_after_bad_requests(client):
    assert client.is_server_live()
    result = client.infer("identity_fp32", [infer_input("INPUT0", _f32(1, 3))])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _f32(1, 3))
