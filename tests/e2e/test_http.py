"""The KServe v2 HTTP/REST front end, with the official ``tritonclient.http`` (sync and
aio) and raw HTTP (the status and ``{"error": ...}`` body a curl user sees)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from e2e_support import build_models, server_env, start_server

DTYPES = build_models.DTYPES


@pytest.fixture(scope="module")
def server(test_repo):
    with start_server(test_repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def rest(server):
    c = httpclient.InferenceServerClient(server.http_url)
    yield c
    c.close()


def _request(server, method: str, path: str, body: bytes = b"", headers=None):
    """(status, headers, body) of one raw request."""
    host, port = server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def _error(server, method, path, body=b"", headers=None):
    status, _, raw = _request(server, method, path, body, headers)
    return status, json.loads(raw)["error"]


def test_health_metadata_and_config(rest):
    assert rest.is_server_live()
    assert not rest.is_server_ready()  # the test repository's broken models: strict readiness
    assert rest.is_model_ready("identity_fp32") and not rest.is_model_ready("nope")
    meta = rest.get_server_metadata()
    assert meta["name"] == "tensorgate" and "model_repository" in meta["extensions"]
    model = rest.get_model_metadata("add_sub")
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}
    config = rest.get_model_config("identity_fp32")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [-1]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    versions = rest.get_model_metadata("versioned_all")["versions"]
    assert versions == ["1", "2", "3"]
    assert rest.get_model_metadata("versioned_all", "2")["versions"] == ["2"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.v2)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips(rest, dtype, binary):
    x = build_models.sample(dtype, (2, 3), np.random.default_rng(7))
    if dtype.v2 == "BYTES":
        x = np.array([[b"a", b"\xc3\xa9t\xc3\xa9", b""], [b"x" * 100, b"y", b"z"]], dtype=object)
    inp = httpclient.InferInput("INPUT0", list(x.shape), dtype.v2)
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    result = rest.infer(f"identity_{dtype.suffix}", [inp], outputs=outputs)
    out = result.as_numpy("OUTPUT0")
    assert out.shape == x.shape
    if dtype.v2 == "BYTES":
        assert [v if isinstance(v, bytes) else v.encode() for v in out.reshape(-1)] == list(
            x.reshape(-1)
        )
    else:
        np.testing.assert_array_equal(out.astype(x.dtype), x)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT0"]


def test_all_outputs_request_id_and_classification(rest):
    x = np.array([[0.1, 0.9, 0.3, 0.7, 0.2]], np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 5], "FP32")
    inp.set_data_from_numpy(x)
    result = rest.infer("classifier", [inp], request_id="req-7", outputs=[
        httpclient.InferRequestedOutput("OUTPUT0", class_count=2),
        httpclient.InferRequestedOutput("OUTPUT1"),
    ])
    assert result.get_response()["id"] == "req-7"
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT0"), np.array([[b"0.900000:1:cat", b"0.700000:3"]], dtype=object)
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x.astype(np.int32))


def test_curl_style_json_request(server):
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": list(range(16))},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", "data": [[1] * 16]},
    ]}).encode()
    status, headers, raw = _request(server, "POST", "/v2/models/add_sub/infer", body,
                                    {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"] == "application/json"
    reply = json.loads(raw)
    out = {o["name"]: o for o in reply["outputs"]}
    assert out["OUTPUT0"]["data"] == [float(i + 1) for i in range(16)]
    assert out["OUTPUT1"]["shape"] == [1, 16] and reply["model_name"] == "add_sub"


@pytest.mark.parametrize(
    "method, path, body, status, words",
    [
        ("POST", "/v2/models/nope/infer", b'{"inputs": []}', 404,
         "Request for unknown model: 'nope' is not found"),
        ("POST", "/v2/models/add_sub/infer", b"{not json", 400,
         "failed to parse the request JSON buffer"),
        ("POST", "/v2/models/add_sub/infer",
         b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", '
         b'"data": [1, 2]}, {"name": "INPUT1", "shape": [1, 16], "datatype": "FP32", '
         b'"data": [0]}]}', 400,
         "input byte size mismatch for input 'INPUT0' for model 'add_sub'. Expected 64, got 8"),
        ("POST", "/v2/models/add_sub/infer",
         b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", '
         b'"data": ["a"]}]}', 400, "'data' does not hold FP32 values"),
        ("POST", "/v2/models/add_sub/infer",
         b'{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]}', 400,
         "unable to find data for input tensor 'INPUT0'"),
        ("POST", "/v2/models/identity_fp32/versions/x/infer", b'{"inputs": []}', 400,
         "failed to get model version from specified version string 'x'"),
        ("GET", "/v2/models/identity_fp32/infer", b"", 405, "Method Not Allowed"),
        ("GET", "/v2/nothing/here", b"", 404, "Not Found"),
        ("POST", "/v2/repository/models/%2E%2E%2Foutside/load", b"", 400,
         "model name must not contain path traversal characters"),
        ("POST", "/v2/repository/models/..%2F..%2Fetc/load", b"", 400,
         "model name must not contain path traversal characters"),
        ("POST", "/v2/repository/models/%2E%2E/load", b"", 400,
         "model name must not contain path traversal characters"),
        ("POST", "/v2/repository/models/%20/load", b"", 400, "Model name cannot be empty"),
        ("POST", "/v2/repository/models/a%00b/load", b"", 400, "control characters"),
        ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/k", "byte_size": 8}',
         501, "Client shared memory is disabled"),
        ("POST", "/v2/cudasharedmemory/region/r/register",
         b'{"raw_handle": {"b64": ""}, "device_id": 0, "byte_size": 8}', 501,
         "Client shared memory is disabled"),
        ("GET", "/v2/cudasharedmemory/region/r/register", b"", 405, "Method Not Allowed"),
        ("GET", "/v2/systemsharedmemory/region/r/register", b"", 405, "Method Not Allowed"),
    ],
)
def test_errors_have_the_matching_status_and_a_json_body(server, method, path, body, status,
                                                        words):
    got, message = _error(server, method, path, body)
    assert got == status, message
    assert words in message


def test_a_path_with_a_raw_traversal_is_not_a_model(server, rest):
    before = rest.get_model_repository_index()
    status, _, _ = _request(server, "POST", "/v2/repository/models/../outside/load")
    assert status == 404
    assert rest.get_model_repository_index() == before


def test_binary_extension_errors(server):
    header = b'{"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32", ' \
             b'"parameters": {"binary_data_size": 12}}]}'
    ok = header + np.ones(3, np.float32).tobytes()
    path = "/v2/models/identity_fp32/infer"
    status, headers, raw = _request(server, "POST", path, ok,
                                    {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, raw
    short = header + b"\0" * 8
    got, message = _error(server, "POST", path, short,
                          {"Inference-Header-Content-Length": str(len(header))})
    assert got == 400 and "runs past the end of the body" in message
    got, message = _error(server, "POST", path, ok + b"xx",
                          {"Inference-Header-Content-Length": str(len(header))})
    assert got == 400 and "no input's binary_data_size accounts for" in message
    got, message = _error(server, "POST", path, ok, {"Inference-Header-Content-Length": "-3"})
    assert got == 400


def test_statistics_and_repository(rest):
    stats = rest.get_inference_statistics("identity_fp32")["model_stats"][0]
    assert stats["name"] == "identity_fp32" and isinstance(stats["inference_count"], int)
    index = rest.get_model_repository_index()
    names = {m["name"] for m in index}
    assert {"identity_fp32", "corrupt_model"} <= names
    with pytest.raises(InferenceServerException) as err:
        rest.get_model_metadata("nope")
    assert err.value.status() == "404"


def test_async_client(server):
    async def main():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            inp = aioclient.InferInput("INPUT0", [2, 3], "FP32")
            inp.set_data_from_numpy(x)
            results = await asyncio.gather(*(client.infer("identity_fp32", [inp]) for _ in range(8)))
            for r in results:
                np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), x)
        finally:
            await client.close()

    asyncio.run(main())


def test_keep_alive_pipelining_and_expect_continue(server):
    host, port = server.http_url.rsplit(":", 1)
    body = b'{"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [5]}]}'
    one = (b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(one * 3)  # three pipelined requests, answered in order
        data = b""
        while data.count(b"HTTP/1.1 200 OK") < 3:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
        s.sendall(b"POST /v2/models/identity_fp32/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        s.sendall(b"this is not HTTP\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 400 Bad Request")


def test_metrics_port_serves_metrics_only(server):
    import urllib.request
    from urllib.error import HTTPError

    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as reply:
        assert b"nv_inference_request_success" in reply.read()
    for path in ("/v2/health/ready", "/", "/metrics/x"):
        with pytest.raises(HTTPError) as err:
            urllib.request.urlopen(server.metrics_url + path, timeout=10)
        assert err.value.code == 404


def test_body_limit(test_repo):
    with start_server(test_repo, "--max-message-mb", "1") as srv:
        big = b'{"inputs": [' + b" " * (1 << 20) + b"]}"
        got, message = _error(srv, "POST", "/v2/models/identity_fp32/infer", big)
        assert got == 413 and "--max-message-mb" in message


def test_tokens_roles_and_rate_limits_apply_to_http(test_repo):
    env = server_env(TENSORGATE_AUTH_TOKENS="h-infer infer;h-admin admin")
    with start_server(test_repo, "--rate-limit-rps", "1", "--rate-limit-burst", "3",
                      env=env) as srv:
        body = b'{"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", ' \
               b'"data": [1]}]}'
        path = "/v2/models/identity_fp32/infer"
        assert _request(srv, "GET", "/v2/health/live")[0] == 200  # probes stay open
        got, message = _error(srv, "POST", path, body)
        assert got == 401 and "missing credentials" in message
        got, _ = _error(srv, "POST", path, body, {"Authorization": "Bearer nope"})
        assert got == 401
        infer = {"Authorization": "Bearer h-infer"}
        assert _request(srv, "POST", path, body, infer)[0] == 200
        got, message = _error(srv, "POST", "/v2/repository/models/identity_fp32/unload",
                              b"", infer)
        assert got == 403 and "admin" in message
        statuses = [_request(srv, "POST", path, body, infer)[0] for _ in range(6)]
        assert 429 in statuses  # the bucket (burst 3, 1/s) ran dry
        admin = {"Authorization": "Bearer h-admin"}
        assert _request(srv, "POST", "/v2/repository/models/identity_fp32/unload", b"",
                        admin)[0] == 200
        log = srv.wait_for_log("admin rpc=RepositoryModelUnload")
        assert "model=identity_fp32 outcome=ok" in log


def test_idle_keep_alive_connections_are_closed(test_repo):
    with start_server(test_repo, "--http-idle-timeout-secs", "1") as srv:
        host, port = srv.http_url.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.recv(4096).startswith(b"HTTP/1.1 200 OK")
            with socket.create_connection((host, int(port)), timeout=10) as busy:
                for _ in range(6):  # 1.8 s of requests, each well inside the timeout
                    busy.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert busy.recv(4096).startswith(b"HTTP/1.1 200 OK")
                    time.sleep(0.3)
                assert idle.recv(4096) == b""  # closed by the server after ~1 s idle
