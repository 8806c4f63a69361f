"""Both gRPC front ends, one server each: the native one (grpc++ owns the port, every
RPC but ModelInfer relayed to grpc.aio) and grpc.aio alone. What a client sees must not
depend on which one serves it. The rest of tests/e2e runs on the default (native where
it is built)."""

from __future__ import annotations

import os
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from e2e_support import infer_input, message_of, model_subset, start_server, status_of
from tensorgate.grpc import native

ADMIN_TOKEN = "admin-token-0123456789"
INFER_TOKEN = "infer-token-0123456789"
SPOOFED_PEER = "ipv4:203.0.113.9:4242"


def _front_ends():
    if native.available():
        return ["native", "grpcio"]
    if os.environ.get("TENSORGATE_REQUIRE_NATIVE_FRONTEND") == "1":
        raise RuntimeError("the native front end was not built (grpc++ missing?)")
    return ["grpcio"]


@pytest.fixture(scope="module")
def small_repo(test_repo, tmp_path_factory):
    return model_subset(test_repo, tmp_path_factory.mktemp("frontends_repo"))


@pytest.fixture(scope="module", params=_front_ends())
def served(request, small_repo, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"{ADMIN_TOKEN} admin\n{INFER_TOKEN} infer\n")
    with start_server(
        small_repo, "--frontend", request.param, "--auth-tokens-file", str(tokens),
        "--max-message-mb", "1",
    ) as server:
        yield request.param, server


def _auth(token: str = INFER_TOKEN):
    return {"authorization": f"Bearer {token}"}


def test_the_log_names_the_front_end(served):
    front_end, server = served
    expected = "native (grpc++)" if front_end == "native" else "grpc.aio"
    assert f"front end: {expected}" in server.log


def test_infer_and_metadata_through_tritonclient(served):
    _, server = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert client.is_server_ready(headers=_auth())
        meta = client.get_model_metadata("identity_fp32", headers=_auth())
        assert meta.name == "identity_fp32"
        x = np.arange(8, dtype=np.float32).reshape(1, 8)
        result = client.infer(
            "identity_fp32", [infer_input("INPUT0", x)], request_id="r-7", headers=_auth()
        )
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == (
            "identity_fp32", "1", "r-7"
        )
        with pytest.raises(Exception) as err:  # ModelInfer's own errors, exact
            client.infer("no_such_model", [infer_input("INPUT0", x)], headers=_auth())
        assert status_of(err.value) == "NOT_FOUND"
        assert "no_such_model" in message_of(err.value)
        with pytest.raises(Exception) as err:  # a relayed RPC's status and message
            client.get_model_metadata("no_such_model", headers=_auth())
        assert status_of(err.value) == "NOT_FOUND"
        assert "no_such_model" in message_of(err.value)
        with pytest.raises(Exception) as err:  # credentials are checked on both paths
            client.infer("identity_fp32", [infer_input("INPUT0", x)])
        assert status_of(err.value) == "UNAUTHENTICATED"
    finally:
        client.close()


def test_streaming_infer(served):
    _, server = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = []
    try:
        client.start_stream(callback=lambda result, error: results.append((result, error)),
                            headers=_auth())
        for i in range(5):
            x = np.full((1, 8), i, dtype=np.float32)
            client.async_stream_infer("identity_fp32", [infer_input("INPUT0", x)],
                                      request_id=str(i))
        client.stop_stream()  # waits for the responses
    finally:
        client.close()
    assert len(results) == 5 and all(error is None for _, error in results)
    by_id = {r.get_response().id: r.as_numpy("OUTPUT0") for r, _ in results}
    for i in range(5):
        np.testing.assert_array_equal(by_id[str(i)], np.full((1, 8), i, dtype=np.float32))


def test_oversized_messages_are_refused_on_both_paths(served):
    _, server = served
    client = grpcclient.InferenceServerClient(server.grpc_url)
    big = np.zeros((1, 300_000), dtype=np.float32)  # 1.2 MB > --max-message-mb 1
    try:
        with pytest.raises(Exception) as err:
            client.infer("identity_fp32", [infer_input("INPUT0", big)], headers=_auth())
        assert status_of(err.value) == "RESOURCE_EXHAUSTED"
    finally:
        client.close()


def test_audit_names_the_real_peer_not_a_header_a_caller_sends(served):
    _, server = served
    with grpc.insecure_channel(server.grpc_url) as channel:
        unload = channel.unary_unary(
            "/inference.GRPCInferenceService/RepositoryModelUnload",
            request_serializer=lambda b: b, response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as err:
            unload(b"\n\x0didentity_fp32", timeout=10, metadata=[
                ("authorization", f"Bearer {INFER_TOKEN}"),
                ("x-tensorgate-peer", SPOOFED_PEER),
            ])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/inference.GRPCInferenceService/NoSuchRpc")(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    log = server.wait_for_log("denied rpc=RepositoryModelUnload peer=ipv4:127.0.0.1:")
    assert "203.0.113.9" not in log


def test_metrics_name_the_front_end_counters(served):
    front_end, server = served
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    if front_end == "native":
        calls = [line for line in text.splitlines()
                 if line.startswith("tensorgate_native_infer_calls_total ")]
        assert calls and float(calls[0].split()[1]) >= 1
        assert "tensorgate_native_infer_shed_total 0.0" in text
        assert "tensorgate_native_relayed_calls_total" in text
    else:
        assert "tensorgate_native_" not in text
