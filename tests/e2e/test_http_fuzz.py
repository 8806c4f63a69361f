"""Hypothesis-driven malformed HTTP against the REST front end.

Four strategies: random bytes on a raw connection (HTTP framing garbage), random JSON
documents as an infer body, mutations of a valid infer body (types swapped, fields
dropped, shapes and sizes wrong), and binary-extension bodies with random header
lengths and data sizes. Every answer must be a documented status with a JSON
``{"error": ...}`` that is not the generic internal error; garbage on a raw connection
gets 400 (or the connection closes); every request returns within its timeout, and
the server still serves a valid request at the end.
"""

from __future__ import annotations

import collections
import http.client
import json
import shutil
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e_support import start_server
from fuzz_cases import HTTP_MUTATIONS, mutate_http_body, valid_http_body

MODELS = ("identity_fp32", "identity_bytes", "add_sub", "fixed_shape")
EXAMPLES = 250  # per strategy; 4 strategies: 1,000 cases
TIMEOUT_S = 5.0
ALLOWED = {200, 400, 404, 405, 413}
TRIED: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def fuzz_server(test_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("http_fuzz_repo")
    for name in MODELS:
        shutil.copytree(test_repo / name, root / name)
    with start_server(root, "--max-message-mb", "1") as srv:
        yield srv
    print(f"\nHTTP fuzz cases tried: {dict(TRIED)} (total {sum(TRIED.values())})")


@pytest.fixture(scope="module")
def post(fuzz_server):
    host, port = fuzz_server.http_url.rsplit(":", 1)

    def send(kind: str, path: str, body: bytes, headers=None, expect=None) -> None:
        TRIED[kind] += 1
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        try:
            conn.request("POST", path, body=body, headers=headers or {})
            reply = conn.getresponse()
            status, raw = reply.status, reply.read()
        except socket.timeout:
            raise AssertionError(f"hang on {body[:200]!r}") from None
        finally:
            conn.close()
        assert status in ALLOWED, (status, raw[:300], body[:200])
        assert expect is None or status == expect, (status, raw[:300])
        if status != 200:
            error = json.loads(raw)["error"]
            assert error and "internal error" not in error, (status, error)

    return send


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
paths = st.sampled_from([f"/v2/models/{m}/infer" for m in MODELS]
                        + ["/v2/models/identity_fp32/versions/1/infer"])


@FUZZ
@given(path=paths, doc=json_values)
def test_random_json_bodies(post, path, doc):
    post("json", path, json.dumps(doc).encode())


mutations = st.sampled_from(HTTP_MUTATIONS)


@FUZZ
@given(rows=st.integers(1, 4), changes=st.lists(mutations, min_size=1, max_size=3))
def test_mutated_bodies(post, rows, changes):
    doc = mutate_http_body(valid_http_body(rows), changes)
    post("mutated", "/v2/models/identity_fp32/infer", json.dumps(doc).encode())


@FUZZ
@given(header_length=st.integers(-5, 400), size=st.integers(-2, 64),
       tail=st.binary(max_size=64))
def test_binary_extension_bodies(post, header_length, size, tail):
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]}).encode()
    post("binary", "/v2/models/identity_fp32/infer", header + tail,
         {"Inference-Header-Content-Length": str(header_length)})


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=300))
def test_garbage_on_the_wire(fuzz_server, garbage):
    TRIED["wire"] += 1
    host, port = fuzz_server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as s:
        s.sendall(garbage + b"\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        try:
            reply = s.recv(4096)
        except socket.timeout:
            raise AssertionError(f"hang on {garbage!r}") from None
    # Either the server could not even see a request (nothing, closed) or it answered
    # with a status line; garbage never gets a 5xx.
    if reply:
        assert reply.startswith(b"HTTP/1.1 "), reply[:100]
        assert not reply.startswith(b"HTTP/1.1 5"), reply[:200]


@pytest.mark.parametrize("name", ["x" * 256, "\u00e9" * 300])
def test_load_of_a_name_too_long_for_the_file_system_is_404(post, name):
    """POST /v2/repository/models/<a name past NAME_MAX>/load was a 500 internal error
    (ENAMETOOLONG, found by bench/fuzz_scale.py); no directory has that name: 404."""
    from urllib.parse import quote

    path = f"/v2/repository/models/{quote(name, safe='')}/load"
    post("regression", path, b"", expect=404)
    post("regression", path.replace("/load", "/unload"), b"", expect=404)


def test_still_serving_after_the_fuzz(fuzz_server):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(fuzz_server.http_url)
    try:
        x = np.ones((1, 3), np.float32)
        inp = httpclient.InferInput("INPUT0", [1, 3], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(
            client.infer("identity_fp32", [inp]).as_numpy("OUTPUT0"), x
        )
    finally:
        client.close()
    assert sum(TRIED.values()) >= 4 * EXAMPLES * 0.9, TRIED
