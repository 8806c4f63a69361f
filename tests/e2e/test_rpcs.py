"""Every GRPCInferenceService RPC through the official tritonclient, plus health,
reflection and the Prometheus endpoint."""

from __future__ import annotations

import queue
import re
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from e2e_support import (
    build_models,
    infer_input,
    message_of,
    model_ready,
    start_server,
    status_of,
)


def _x(rows: int, cols: int = 3, start: float = 0.0) -> np.ndarray:
    return (np.arange(rows * cols, dtype=np.float32) + start).reshape(rows, cols)


# --------------------------------------------------------------------------- server


def test_server_live(client):
    assert client.is_server_live() is True


def test_server_not_ready_while_a_model_failed_to_load(client):
    # Strict readiness (the default, as Triton): the test repository holds models that
    # fail to load on purpose, so the server is live but not ready.
    assert client.is_server_live()
    assert client.is_server_ready() is False


def test_relaxed_readiness_ignores_failed_models(test_repo):
    with start_server(test_repo, "--strict-readiness", "false") as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        assert c.is_server_ready() is True
        c.close()


def test_server_ready_answers(client):
    # Some models in this repository fail to load on purpose, so readiness policy is not
    # asserted here (test_cli asserts True on the all-good demo repository).
    assert isinstance(client.is_server_ready(), bool)


def test_server_metadata(client):
    meta = client.get_server_metadata()
    assert meta.name
    assert meta.version
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == meta.name


# --------------------------------------------------------------------------- model


def test_model_ready(client):
    for name in build_models.GOOD_TEST_MODELS:
        assert client.is_model_ready(name), name
    assert client.is_model_ready("identity_fp32", "1")
    assert not model_ready(client, "identity_fp32", "2")
    assert not model_ready(client, "no_such_model")
    for name in build_models.BAD_TEST_MODELS:
        assert not model_ready(client, name), name


def test_model_ready_versions(client):
    assert client.is_model_ready("versioned", "3")
    assert not model_ready(client, "versioned", "1")
    assert not model_ready(client, "versioned", "2")
    for v in ("1", "2", "3"):
        assert client.is_model_ready("versioned_all", v), v
    assert client.is_model_ready("versioned_specific", "1")
    assert not model_ready(client, "versioned_specific", "2")
    assert client.is_model_ready("versioned_specific", "3")


def test_model_metadata(client):
    meta = client.get_model_metadata("identity_fp32")
    assert meta.name == "identity_fp32"
    assert list(meta.versions) == ["1"]
    assert "onnx" in meta.platform.lower()
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT0", "FP32", [-1, -1])
    ]
    assert sorted((t.name, t.datatype, tuple(t.shape)) for t in meta.outputs) == [
        ("OUTPUT0", "FP32", (-1, -1)),
        ("OUTPUT1", "FP32", (-1, -1)),
    ]


def test_model_metadata_datatypes(client):
    for dtype in build_models.DTYPES:
        meta = client.get_model_metadata(f"identity_{dtype.suffix}")
        assert meta.inputs[0].datatype == dtype.v2, dtype
        assert {o.datatype for o in meta.outputs} == {dtype.v2}, dtype


def test_model_metadata_completed_from_graph(client):
    meta = client.get_model_metadata("add_sub")
    assert sorted((t.name, t.datatype, tuple(t.shape)) for t in meta.inputs) == [
        ("INPUT0", "FP32", (-1, 16)),
        ("INPUT1", "FP32", (-1, 16)),
    ]
    assert sorted(t.name for t in meta.outputs) == ["OUTPUT0", "OUTPUT1"]


def test_model_metadata_versions_follow_policy(client):
    assert list(client.get_model_metadata("versioned").versions) == ["3"]
    assert sorted(client.get_model_metadata("versioned_all").versions) == ["1", "2", "3"]
    assert sorted(client.get_model_metadata("versioned_specific").versions) == ["1", "3"]


def test_model_metadata_unknown_model(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert status_of(err.value) == "NOT_FOUND"
    assert "no_such_model" in message_of(err.value)


def test_model_config_from_file(client):
    cfg = client.get_model_config("identity_fp32").config
    assert cfg.name == "identity_fp32"
    assert cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 20000
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("INPUT0", mc.TYPE_FP32, [-1])
    ]


def test_model_config_completed_from_graph(client):
    cfg = client.get_model_config("add_sub").config
    assert cfg.name == "add_sub"
    assert cfg.max_batch_size > 0  # dynamic first dim everywhere: batchable
    ins = sorted((i.name, i.data_type, list(i.dims)) for i in cfg.input)
    outs = sorted((o.name, o.data_type, list(o.dims)) for o in cfg.output)
    assert ins == [("INPUT0", mc.TYPE_FP32, [16]), ("INPUT1", mc.TYPE_FP32, [16])]
    assert outs == [("OUTPUT0", mc.TYPE_FP32, [16]), ("OUTPUT1", mc.TYPE_FP32, [16])]


def test_model_config_partial_completed(client):
    cfg = client.get_model_config("partial_config").config
    assert cfg.max_batch_size == 4  # from the file
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [
        ("INPUT0", mc.TYPE_FP32, [4])
    ]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("OUTPUT0", [4])]
    result = client.infer("partial_config", [infer_input("INPUT0", _x(4, 4))])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _x(4, 4) + 1)


def test_model_config_version_policy(client):
    cfg = client.get_model_config("versioned_specific").config
    assert list(cfg.version_policy.specific.versions) == [1, 3]
    assert client.get_model_config("versioned_all").config.version_policy.HasField("all")


def test_model_config_unknown_model(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_model_config("no_such_model")
    assert status_of(err.value) == "NOT_FOUND"


# --------------------------------------------------------------------------- infer


def test_model_infer(client):
    a = _x(2, 16)
    b = _x(2, 16, start=100.0) * 0.5
    result = client.infer(
        "add_sub", [infer_input("INPUT0", a), infer_input("INPUT1", b)], request_id="rpc-1"
    )
    response = result.get_response()
    assert response.model_name == "add_sub"
    assert response.model_version == "1"
    assert response.id == "rpc-1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    out = {o.name: (o.datatype, list(o.shape)) for o in response.outputs}
    assert out == {"OUTPUT0": ("FP32", [2, 16]), "OUTPUT1": ("FP32", [2, 16])}


def test_model_infer_aio(server):
    import asyncio

    import tritonclient.grpc.aio as aioclient

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            assert await c.is_server_live()
            result = await c.infer("fixed_shape", [infer_input("INPUT0", _x(2, 3))])
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _x(2, 3) * 2)

    asyncio.run(run())


# --------------------------------------------------------------------------- stream


@pytest.mark.timeout(60)
def test_model_stream_infer_survives_bad_message(server):
    responses: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        c.start_stream(callback=lambda result, error: responses.put((result, error)))
        c.async_stream_infer("identity_fp32", [infer_input("INPUT0", _x(1, 3, 1))], request_id="s1")
        c.async_stream_infer(
            "identity_fp32", [infer_input("INPUT0", np.ones((1, 3), np.int32))], request_id="bad"
        )
        c.async_stream_infer("identity_fp32", [infer_input("INPUT0", _x(2, 3, 7))], request_id="s2")
        got = [responses.get(timeout=20) for _ in range(3)]
        errors = [e for _, e in got if e is not None]
        results = {r.get_response().id: r for r, e in got if e is None}
        assert len(errors) == 1, got
        assert "INPUT0" in errors[0].message()
        assert set(results) == {"s1", "s2"}
        np.testing.assert_array_equal(results["s1"].as_numpy("OUTPUT0"), _x(1, 3, 1))
        np.testing.assert_array_equal(results["s2"].as_numpy("OUTPUT1"), _x(2, 3, 7))

        # The stream is still usable after the bad message, for another model too.
        c.async_stream_infer("fixed_shape", [infer_input("INPUT0", _x(2, 3))], request_id="s3")
        result, error = responses.get(timeout=20)
        assert error is None, error
        assert result.get_response().id == "s3"
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), _x(2, 3) * 2)
    finally:
        c.stop_stream()
        c.close()
    assert responses.empty()


@pytest.mark.timeout(60)
def test_model_stream_infer_aio_many(server):
    import asyncio

    import tritonclient.grpc.aio as aioclient

    n = 20

    async def requests():
        for i in range(n):
            model = "no_such_model" if i == 10 else "identity_int64"
            arr = np.full((1, 2), i, dtype=np.int64)
            yield {
                "model_name": model,
                "inputs": [infer_input("INPUT0", arr)],
                "request_id": str(i),
            }

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            seen, errors = {}, []
            async for result, error in c.stream_infer(requests()):
                if error is not None:
                    errors.append(error)
                else:
                    seen[result.get_response().id] = result.as_numpy("OUTPUT0")
                if len(seen) + len(errors) == n:
                    break
            return seen, errors

    seen, errors = asyncio.run(asyncio.wait_for(run(), 30))
    assert len(errors) == 1 and "no_such_model" in errors[0].message()
    assert sorted(seen, key=int) == [str(i) for i in range(n) if i != 10]
    for key, value in seen.items():
        np.testing.assert_array_equal(value, np.full((1, 2), int(key), dtype=np.int64))


# --------------------------------------------------------------------------- statistics


def _stats(client, name: str, version: str = ""):
    (stats,) = [
        s for s in client.get_inference_statistics(name, version).model_stats if s.name == name
    ]
    return stats


def test_model_statistics_count_inferences(client):
    # identity_uint8 is used by no other test in this module, so the deltas are exact.
    before = _stats(client, "identity_uint8")
    for i in range(3):
        arr = np.full((2, 5), i, dtype=np.uint8)
        client.infer("identity_uint8", [infer_input("INPUT0", arr)])
    after = _stats(client, "identity_uint8")
    assert after.version == "1"
    assert after.inference_count - before.inference_count == 6  # 3 requests x batch 2
    assert after.execution_count - before.execution_count == 3  # sequential: no merging
    assert after.inference_stats.success.count - before.inference_stats.success.count == 3
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert (
        after.inference_stats.compute_infer.count - before.inference_stats.compute_infer.count == 3
    )
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert after.last_inference > 0


def test_model_statistics_all_models(client):
    client.infer("fixed_shape", [infer_input("INPUT0", _x(2, 3))])
    names = {s.name for s in client.get_inference_statistics().model_stats}
    assert {"fixed_shape", "identity_fp32", "add_sub"} <= names


def test_model_statistics_unknown_model(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_inference_statistics("no_such_model")
    assert status_of(err.value) == "NOT_FOUND"


# --------------------------------------------------------------------------- repository


def test_repository_index(client):
    index = client.get_model_repository_index().models
    by_name: dict = {}
    for entry in index:
        by_name.setdefault(entry.name, []).append(entry)
    for name in build_models.GOOD_TEST_MODELS:
        assert name in by_name, name
        assert any(e.state == "READY" for e in by_name[name]), (name, by_name[name])
    (fp32,) = [e for e in by_name["identity_fp32"] if e.state == "READY"]
    assert fp32.version == "1"
    for name in build_models.BAD_TEST_MODELS:
        assert name in by_name, name
        assert all(e.state == "UNAVAILABLE" for e in by_name[name]), by_name[name]
        assert all(e.reason for e in by_name[name]), by_name[name]


def test_repository_index_versions(client):
    index = client.get_model_repository_index().models
    ready = {(e.name, e.version) for e in index if e.state == "READY"}
    assert ("versioned", "3") in ready
    assert ("versioned", "1") not in ready and ("versioned", "2") not in ready
    assert {("versioned_all", v) for v in ("1", "2", "3")} <= ready
    assert ("versioned_specific", "2") not in ready
    assert {("versioned_specific", "1"), ("versioned_specific", "3")} <= ready


def test_repository_index_contradicting_config_reason(client):
    index = client.get_model_repository_index().models
    reasons = " ".join(e.reason for e in index if e.name == "contradicting_config")
    assert "INPUT0" in reasons, reasons
    assert "type" in reasons.lower(), reasons


# --------------------------------------------------------------------------- unimplemented


@pytest.mark.parametrize(
    "method, request_message",
    [
        (
            "SystemSharedMemoryRegister",
            service_pb2.SystemSharedMemoryRegisterRequest(
                name="r", key="/k", offset=0, byte_size=64
            ),
        ),
        ("SystemSharedMemoryUnregister", service_pb2.SystemSharedMemoryUnregisterRequest(name="r")),
        (
            "CudaSharedMemoryRegister",
            service_pb2.CudaSharedMemoryRegisterRequest(
                name="r", raw_handle=b"\0" * 64, device_id=0, byte_size=64
            ),
        ),
        ("CudaSharedMemoryUnregister", service_pb2.CudaSharedMemoryUnregisterRequest(name="r")),
    ],
)
def test_unimplemented_rpcs(server, method, request_message):
    """Shared memory changes, system and CUDA, without --allow-client-shm."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            getattr(stub, method)(request_message, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details()


# --------------------------------------------------------------------------- health, reflection


def test_grpc_health(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_and_describes_services(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.grpc_url) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert "inference.GRPCInferenceService" in services
        assert "grpc.health.v1.Health" in services
        # What grpcurl does: resolve the service and its message types by reflection.
        pool = DescriptorPool(db)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        methods = {m.name for m in service.methods}
        assert {"ModelInfer", "ModelStreamInfer", "ModelReady", "RepositoryIndex"} <= methods
        request = pool.FindMessageTypeByName("inference.ModelInferRequest")
        assert request.fields_by_name["raw_input_contents"].number == 7


# --------------------------------------------------------------------------- metrics


def _metric(text: str, name: str, model: str) -> float:
    total = 0.0
    pattern = re.compile(rf"^{name}\{{([^}}]*)\}} ([0-9.eE+-]+)$", re.M)
    for labels, value in pattern.findall(text):
        if re.search(rf'(^|,)model="{model}"', labels):
            total += float(value)
    return total


def _scrape(server) -> tuple[str, str]:
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as response:
        assert response.status == 200
        return response.headers.get("Content-Type", ""), response.read().decode()


def test_metrics_endpoint_counts_success(client, server):
    # identity_int8 is used by no other test in this module.
    _, before = _scrape(server)
    for _ in range(3):
        client.infer("identity_int8", [infer_input("INPUT0", np.ones((1, 4), np.int8))])
    content_type, after = _scrape(server)
    assert content_type.startswith("text/plain")
    assert re.search(r'^nv_inference_request_success\{[^}]*model="identity_int8"', after, re.M), (
        after
    )
    delta = _metric(after, "nv_inference_request_success", "identity_int8") - _metric(
        before, "nv_inference_request_success", "identity_int8"
    )
    assert delta == 3
