"""Tensor round trips: every datatype, raw and typed contents, output subsets, request
ids, large tensors and many concurrent clients. Expected values come from running the
same ONNX file in-process with onnxruntime."""

from __future__ import annotations

import asyncio
import zlib

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from e2e_support import build_models, infer_input, message_of, status_of

DTYPES = {d.suffix: d for d in build_models.DTYPES}

# The typed field of InferTensorContents for each datatype (FP16 has none).
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _expected(test_repo, suffix: str, array: np.ndarray) -> dict:
    return build_models.run_onnx(
        test_repo / f"identity_{suffix}" / "1" / "model.onnx", {"INPUT0": array}
    )


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Equal shape, dtype and values; numeric values bit for bit (NaN, -0.0 included)."""
    assert got is not None
    assert got.shape == want.shape
    if want.dtype == np.object_:
        assert [bytes(v) for v in got.ravel()] == [bytes(v) for v in want.ravel()]
    else:
        assert got.dtype == want.dtype
        assert got.tobytes() == want.tobytes()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(
        server.grpc_url, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# --------------------------------------------------------------------------- raw


@pytest.mark.parametrize("suffix", list(DTYPES))
@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (8, 2)])
def test_raw_round_trip(client, test_repo, suffix, shape):
    dtype = DTYPES[suffix]
    array = build_models.sample(
        dtype, shape, np.random.default_rng(zlib.crc32(f"{suffix}{shape}".encode()))
    )
    if dtype.v2 in ("FP16", "FP32", "FP64"):
        array[-1, -1] = np.nan
    want = _expected(test_repo, suffix, array)
    result = client.infer(f"identity_{suffix}", [infer_input("INPUT0", array, dtype.v2)])
    response = result.get_response()
    assert {o.name: (o.datatype, list(o.shape)) for o in response.outputs} == {
        "OUTPUT0": (dtype.v2, list(shape)),
        "OUTPUT1": (dtype.v2, list(shape)),
    }
    assert len(response.raw_output_contents) == 2
    _assert_same(result.as_numpy("OUTPUT0"), want["OUTPUT0"])
    _assert_same(result.as_numpy("OUTPUT1"), want["OUTPUT1"])


def test_bytes_wire_format(client):
    # BYTES travels as 4-byte little-endian length prefixes, row-major.
    values = np.array([[b"", b"ab"], [b"\x00\x01", "\u00e9".encode()]], dtype=np.object_)
    result = client.infer("identity_bytes", [infer_input("INPUT0", values)])
    raw = result.get_response().raw_output_contents
    want = b"".join(len(v).to_bytes(4, "little") + v for v in values.ravel())
    assert raw[0] == want
    assert raw[1] == want


def test_large_tensor(client):
    array = np.random.default_rng(7).standard_normal((8, 100_000)).astype(np.float32)
    result = client.infer("identity_fp32", [infer_input("INPUT0", array)])
    _assert_same(result.as_numpy("OUTPUT0"), array)
    _assert_same(result.as_numpy("OUTPUT1"), array)


def test_bytes_not_utf8_does_not_break_server(client):
    array = np.array([[b"\xff\xfe not utf-8", b"ok"]], dtype=np.object_)
    try:
        result = client.infer("identity_bytes", [infer_input("INPUT0", array)])
    except InferenceServerException as exc:
        assert status_of(exc) == "INVALID_ARGUMENT", exc
        assert "INPUT0" in message_of(exc)
    else:
        _assert_same(result.as_numpy("OUTPUT0"), array)
    ok = np.array([[b"still", b"serving"]], dtype=np.object_)
    _assert_same(
        client.infer("identity_bytes", [infer_input("INPUT0", ok)]).as_numpy("OUTPUT0"), ok
    )


# --------------------------------------------------------------------------- typed


def _typed_request(model: str, datatype: str, array: np.ndarray, request_id: str = ""):
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=list(array.shape))
    values = array.ravel().tolist()
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(values)
    return request


@pytest.mark.parametrize("suffix", [s for s, d in DTYPES.items() if d.v2 != "FP16"])
def test_typed_round_trip(stub, test_repo, suffix):
    dtype = DTYPES[suffix]
    array = build_models.sample(dtype, (2, 4), np.random.default_rng(11))
    want = _expected(test_repo, suffix, array)
    response = stub.ModelInfer(
        _typed_request(f"identity_{suffix}", dtype.v2, array, request_id=f"typed-{suffix}"),
        timeout=30,
    )
    assert response.id == f"typed-{suffix}"
    assert response.model_name == f"identity_{suffix}"
    # Outputs always come back as raw contents.
    assert len(response.raw_output_contents) == 2
    result = grpcclient.InferResult(response)
    _assert_same(result.as_numpy("OUTPUT0"), want["OUTPUT0"])
    _assert_same(result.as_numpy("OUTPUT1"), want["OUTPUT1"])


def test_typed_multi_input(stub):
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 0.5, dtype=np.float32)
    request = service_pb2.ModelInferRequest(model_name="add_sub")
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        t.contents.fp32_contents.extend(arr.ravel().tolist())
    result = grpcclient.InferResult(stub.ModelInfer(request, timeout=30))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


# --------------------------------------------------------------------------- outputs, ids


def test_output_subset(client):
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = client.infer(
        "identity_fp32",
        [infer_input("INPUT0", array)],
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["OUTPUT1"]
    assert len(response.raw_output_contents) == 1
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), array)


def test_output_subset_multi_output_model(client):
    a = np.ones((1, 16), np.float32)
    result = client.infer(
        "add_sub",
        [infer_input("INPUT0", a), infer_input("INPUT1", a * 3)],
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
    )
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - a * 3)


def test_request_id_and_model_echoed(client):
    result = client.infer(
        "identity_int32",
        [infer_input("INPUT0", np.ones((1, 2), np.int32))],
        request_id="my-id-\u00e9",
    )
    response = result.get_response()
    assert response.id == "my-id-\u00e9"
    assert response.model_name == "identity_int32"
    assert response.model_version == "1"


def test_no_request_id_is_empty(client):
    result = client.infer("identity_int32", [infer_input("INPUT0", np.ones((1, 2), np.int32))])
    assert result.get_response().id == ""


# --------------------------------------------------------------------------- concurrency


N_CLIENTS = 16
ROUNDS = 4


def _client_fp32(i: int, r: int) -> np.ndarray:
    rows, cols = 1 + (i + r) % 3, (4 if i % 2 else 7)
    return (np.arange(rows * cols, dtype=np.float32) + i * 10_000 + r * 100).reshape(rows, cols)


def _client_bytes(i: int, r: int) -> np.ndarray:
    rows = 1 + (i + r) % 3
    vals = [f"c{i}-r{r}-{k}-{'x' * ((i * 7 + k) % 13)}".encode() for k in range(rows * 2)]
    return np.array(vals, dtype=np.object_).reshape(rows, 2)


@pytest.mark.timeout(60)
def test_concurrent_clients_get_their_own_rows(server, client):
    import tritonclient.grpc.aio as aioclient

    before = client.get_inference_statistics("identity_fp32").model_stats[0]

    async def one_client(i: int, start: asyncio.Event) -> list:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            await start.wait()
            checked = []
            for r in range(ROUNDS):
                x, s = _client_fp32(i, r), _client_bytes(i, r)
                got_x, got_s = await asyncio.gather(
                    c.infer("identity_fp32", [infer_input("INPUT0", x)], request_id=f"f{i}.{r}"),
                    c.infer("identity_bytes", [infer_input("INPUT0", s)], request_id=f"b{i}.{r}"),
                )
                assert got_x.get_response().id == f"f{i}.{r}"
                assert got_s.get_response().id == f"b{i}.{r}"
                _assert_same(got_x.as_numpy("OUTPUT0"), x)
                _assert_same(got_x.as_numpy("OUTPUT1"), x)
                _assert_same(got_s.as_numpy("OUTPUT0"), s)
                checked.append(r)
            return checked

    async def run():
        start = asyncio.Event()
        tasks = [asyncio.create_task(one_client(i, start)) for i in range(N_CLIENTS)]
        await asyncio.sleep(0.2)  # let every client connect, then release them together
        start.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 45)

    results = asyncio.run(run())
    assert results == [list(range(ROUNDS))] * N_CLIENTS

    after = client.get_inference_statistics("identity_fp32").model_stats[0]
    requests = after.inference_stats.success.count - before.inference_stats.success.count
    executions = after.execution_count - before.execution_count
    rows = after.inference_count - before.inference_count
    assert requests == N_CLIENTS * ROUNDS
    assert rows == sum(_client_fp32(i, r).shape[0] for i in range(N_CLIENTS) for r in range(ROUNDS))
    # Dynamic batching (20 ms window) must merge some of the simultaneous requests.
    assert 0 < executions < requests, (executions, requests)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", list(DTYPES))
def test_batched_clients_get_their_own_rows_for_every_dtype(server, client, suffix):
    """8 simultaneous clients per datatype, each with its own values and row count: the
    batcher merges them into one execution, and each gets back exactly its rows."""
    import tritonclient.grpc.aio as aioclient

    dtype = DTYPES[suffix]
    model = f"identity_{suffix}"
    sent = {
        i: build_models.sample(dtype, (1 + i % 3, 5), np.random.default_rng(1000 + i))
        for i in range(8)
    }
    before = client.get_inference_statistics(model).model_stats[0]

    async def one(c, i: int, start: asyncio.Event):
        await start.wait()
        result = await c.infer(model, [infer_input("INPUT0", sent[i], dtype.v2)])
        return i, result.as_numpy("OUTPUT0")

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            start = asyncio.Event()
            tasks = [asyncio.create_task(one(c, i, start)) for i in sent]
            await asyncio.sleep(0.1)
            start.set()
            return await asyncio.wait_for(asyncio.gather(*tasks), 30)

    for i, got in asyncio.run(run()):
        _assert_same(got, sent[i])
    after = client.get_inference_statistics(model).model_stats[0]
    assert after.inference_count - before.inference_count == sum(a.shape[0] for a in sent.values())
    # The 20 ms window merges simultaneous requests: fewer executions than requests.
    assert after.execution_count - before.execution_count < len(sent)
