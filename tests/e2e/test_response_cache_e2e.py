"""The response cache end to end: a real server with ``--cache-size``, models with
``response_cache { enable: true }`` in a repository of this module's own, driven by
tritonclient (gRPC and HTTP), raw gRPC bytes and raw HTTP bodies.

Answers from the cache must be byte-identical to computed ones on both protocols; a new
version, a reload of a version number from changed files, an unload and a route switch
must never be answered from another version's entries; ModelStatistics and /metrics
count hits and misses as Triton does. The Redis tier is tested against a real
``redis-server`` started here (skipped, with the reason, where it is not installed).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

from e2e_support import build_models, start_server
from tensorgate._proto.inference import grpc_service_pb2 as ipb
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb
from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

INFER = "/inference.GRPCInferenceService/ModelInfer"
CACHE = "response_cache { enable: true }\n"


def _adder_config(name: str, cache: bool = True, policy: str = "") -> str:
    """versioned_model's interface: INPUT0 [batch, 1] FP32 -> OUTPUT0 = INPUT0 + v."""
    return (
        f'name: "{name}"\nmax_batch_size: 8\n'
        'input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        "dynamic_batching { }\n" + policy + (CACHE if cache else "")
    )


def _write_version(root: Path, name: str, version: int, constant: float | None = None) -> None:
    """Version ``version`` of an adder (OUTPUT0 = INPUT0 + constant, default the version),
    written under a hidden name and renamed into place, as the README asks."""
    model = build_models.versioned_model(name, int(constant if constant is not None else version))
    staging = root / name / f".staging-{version}-{uuid.uuid4().hex[:6]}"
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(model.SerializeToString())
    target = root / name / str(version)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _copy_with_cache(test_repo: Path, root: Path, source: str, name: str) -> None:
    shutil.copytree(test_repo / source, root / name)
    config = root / name / "config.pbtxt"
    text = config.read_text().replace(f'name: "{source}"', f'name: "{name}"')
    config.write_text(text + CACHE)


def build_cache_repository(test_repo: Path, root: Path) -> Path:
    """``cached`` and ``direct`` (the same adder, v1, with and without the cache: two
    names of one length, so their raw answers differ only in the name), ``evolving``
    (changed by the version tests), ``routed`` (versions 1 and 2 served), and copies of
    the test repository's BYTES identity and classifier with the cache on."""
    for name, cache in (("cached", True), ("direct", False), ("evolving", True)):
        _write_version(root, name, 1)
        (root / name / "config.pbtxt").write_text(_adder_config(name, cache))
    for version in (1, 2):
        _write_version(root, "routed", version)
    (root / "routed" / "config.pbtxt").write_text(
        _adder_config("routed", policy="version_policy: { all { } }\n"))
    _copy_with_cache(test_repo, root, "identity_bytes", "cached_bytes")
    _copy_with_cache(test_repo, root, "classifier", "cached_classes")
    return root


@pytest.fixture(scope="module")
def repo(test_repo, tmp_path_factory) -> Path:
    return build_cache_repository(test_repo, tmp_path_factory.mktemp("cache") / "repo")


@pytest.fixture(scope="module")
def server(repo):  # conftest's ``client`` (tritonclient.grpc) talks to this one
    with start_server(repo, "--cache-size", "1M", "--allow-client-shm") as srv:
        yield srv


@pytest.fixture(scope="module")
def raw(server):
    channel = grpc.insecure_channel(server.grpc_url)
    yield channel.unary_unary(INFER)
    channel.close()


# --------------------------------------------------------------------------- helpers


def _request_bytes(model: str, value: float, version: str = "", request_id: str = "r",
                   outputs=()) -> bytes:
    req = ipb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    req.raw_input_contents.append(np.array([[value]], np.float32).tobytes())
    for name in outputs:
        req.outputs.add(name=name)
    return req.SerializeToString()


def _answer(raw, model: str, value: float, version: str = "") -> float:
    reply = ipb.ModelInferResponse.FromString(
        raw(_request_bytes(model, value, version), timeout=10))
    return float(np.frombuffer(reply.raw_output_contents[0], np.float32)[0])


def _http(server, path: str, body: bytes, headers=None) -> tuple[int, bytes]:
    host, port = server.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body, headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _json_body(value: float, **extra) -> bytes:
    doc = {"id": "r", "inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32",
                                  "data": [value]}], **extra}
    return json.dumps(doc).encode()


def _stats(client, model: str, version: str = ""):
    return client.get_inference_statistics(model, version).model_stats[0]


def _scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as response:
        return response.read().decode()


def _metric(text: str, name: str, **labels) -> float | None:
    """A sample's value (labels must match those given), or None when absent."""
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if m:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(2))
    return None


def _load(client, name: str) -> None:
    client.load_model(name)


# --------------------------------------------------------------------------- hits, misses


def test_hits_count_as_successes_and_skip_the_model(client, server):
    x = np.array([[41.0]], np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
    inp.set_data_from_numpy(x)
    before = _stats(client, "cached")
    for _ in range(4):
        assert client.infer("cached", [inp]).as_numpy("OUTPUT0")[0, 0] == 42.0
    after = _stats(client, "cached")
    inf, was = after.inference_stats, before.inference_stats
    assert inf.success.count - was.success.count == 4
    assert inf.cache_miss.count - was.cache_miss.count == 1
    assert inf.cache_hit.count - was.cache_hit.count == 3
    assert inf.cache_hit.ns > was.cache_hit.ns
    # Only the miss ran the model (Triton: cached requests are not inferences).
    assert after.inference_count - before.inference_count == 1
    assert after.execution_count - before.execution_count == 1
    text = _scrape(server)
    assert _metric(text, "nv_cache_num_hits_per_model", model="cached", version="1") == inf.cache_hit.count
    assert _metric(text, "nv_cache_num_misses_per_model", model="cached", version="1") == inf.cache_miss.count
    assert _metric(text, "nv_cache_hit_duration_per_model", model="cached", version="1") is not None
    assert _metric(text, "nv_cache_miss_duration_per_model", model="cached", version="1") is not None
    # A model without the cache has no cache families and no cache statistics.
    assert _metric(text, "nv_cache_num_hits_per_model", model="direct") is None
    assert "# TYPE nv_cache_num_hits_per_model counter" in text
    assert _metric(text, "nv_cache_num_entries") >= 1
    assert _metric(text, "nv_cache_num_hits") >= 3
    assert 0 < _metric(text, "tensorgate_cache_bytes") <= _metric(text, "tensorgate_cache_capacity_bytes")


def test_http_and_grpc_share_entries(client, server):
    x = np.array([[7.5]], np.float32)
    inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    before = _stats(client, "cached").inference_stats
    rest = httpclient.InferenceServerClient(server.http_url)
    try:
        assert rest.infer("cached", [inp]).as_numpy("OUTPUT0")[0, 0] == 8.5  # miss
    finally:
        rest.close()
    ginp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
    ginp.set_data_from_numpy(x)
    assert client.infer("cached", [ginp]).as_numpy("OUTPUT0")[0, 0] == 8.5  # hit
    after = _stats(client, "cached").inference_stats
    assert (after.cache_miss.count - before.cache_miss.count,
            after.cache_hit.count - before.cache_hit.count) == (1, 1)


def test_model_statistics_over_http_carry_cache_counts(server):
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/cached/stats",
                                timeout=10) as response:
        doc = json.loads(response.read())
    stats = doc["model_stats"][0]["inference_stats"]
    assert int(stats["cache_hit"]["count"]) >= 1 and int(stats["cache_miss"]["count"]) >= 1


# --------------------------------------------------------------------------- byte-identical


def test_grpc_hit_is_byte_identical_to_a_computed_answer(raw):
    for value in (3.25, -1.0):
        computed = raw(_request_bytes("direct", value), timeout=10)
        miss = raw(_request_bytes("cached", value), timeout=10)
        hit = raw(_request_bytes("cached", value), timeout=10)
        assert miss == hit
        assert hit == computed.replace(b"direct", b"cached")  # names of one length


def test_grpc_byte_identical_for_bytes_and_classification(raw):
    req = ipb.ModelInferRequest(model_name="cached_bytes", id="b")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 3])
    elems = [b"alpha", "\u00e9t\u00e9".encode(), b""]
    req.raw_input_contents.append(b"".join(len(e).to_bytes(4, "little") + e for e in elems))
    body = req.SerializeToString()
    assert raw(body, timeout=10) == raw(body, timeout=10)
    req = ipb.ModelInferRequest(model_name="cached_classes")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 5])
    req.raw_input_contents.append(np.array([[0.1, 0.9, 0.3, 0.7, 0.2]], np.float32).tobytes())
    out = req.outputs.add(name="OUTPUT0")
    out.parameters["classification"].int64_param = 2
    body = req.SerializeToString()
    first, second = raw(body, timeout=10), raw(body, timeout=10)
    assert first == second
    reply = ipb.ModelInferResponse.FromString(second)
    assert reply.outputs[0].datatype == "BYTES"


def test_http_hit_is_byte_identical_to_a_computed_answer(server):
    for extra in ({}, {"outputs": [{"name": "OUTPUT0"}]}):
        body = _json_body(11.0, **extra)
        status, computed = _http(server, "/v2/models/direct/infer", body)
        assert status == 200, computed
        status, miss = _http(server, "/v2/models/cached/infer", body)
        status2, hit = _http(server, "/v2/models/cached/infer", body)
        assert (status, status2) == (200, 200)
        assert miss == hit
        assert hit == computed.replace(b'"model_name":"direct"', b'"model_name":"cached"')
        assert json.loads(hit)["outputs"][0]["data"] == [12.0]


def test_http_binary_output_from_an_entry_a_grpc_request_stored(server, raw):
    raw(_request_bytes("cached", 19.0), timeout=10)  # stored by gRPC
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32",
                                     "data": [19.0]}],
                         "outputs": [{"name": "OUTPUT0",
                                      "parameters": {"binary_data": True}}]}).encode()
    status, body = _http(server, "/v2/models/cached/infer", header)
    status2, computed = _http(server, "/v2/models/direct/infer", header)
    assert (status, status2) == (200, 200)
    assert body == computed.replace(b'"model_name":"direct"', b'"model_name":"cached"')
    assert body.endswith(np.array([20.0], np.float32).tobytes())


def test_concurrent_answers_stay_right(raw, server):
    """Many threads, few distinct inputs, both protocols: every answer is its input's
    (entries hold copies, never views into a batch that later requests reuse)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> bool:
        value = float(100 + i % 7)
        if i % 3:
            return _answer(raw, "cached", value) == value + 1
        status, body = _http(server, "/v2/models/cached/infer", _json_body(value))
        return status == 200 and json.loads(body)["outputs"][0]["data"] == [value + 1]

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(400)))


# --------------------------------------------------------------------------- what the key covers


def test_output_selection_and_classification_get_their_own_entries(client):
    x = np.array([[0.5, 0.1, 0.9, 0.3, 0.2]], np.float32)
    inp = grpcclient.InferInput("INPUT0", [1, 5], "FP32")
    inp.set_data_from_numpy(x)
    before = _stats(client, "cached_classes").inference_stats
    everything = client.infer("cached_classes", [inp])
    only1 = client.infer("cached_classes", [inp],
                         outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    top2 = client.infer("cached_classes", [inp],
                        outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)])
    top1 = client.infer("cached_classes", [inp],
                        outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=1)])
    after = _stats(client, "cached_classes").inference_stats
    assert after.cache_miss.count - before.cache_miss.count == 4  # four different keys
    np.testing.assert_array_equal(everything.as_numpy("OUTPUT0"), x)
    assert everything.as_numpy("OUTPUT1") is not None
    assert only1.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(only1.as_numpy("OUTPUT1"), x.astype(np.int32))
    assert top2.as_numpy("OUTPUT0").shape == (1, 2)
    assert top2.as_numpy("OUTPUT0")[0, 0].startswith(b"0.9")
    assert top1.as_numpy("OUTPUT0").shape == (1, 1)
    # Each again: four hits, the same answers.
    again = client.infer("cached_classes", [inp],
                         outputs=[grpcclient.InferRequestedOutput("OUTPUT0", class_count=2)])
    np.testing.assert_array_equal(again.as_numpy("OUTPUT0"), top2.as_numpy("OUTPUT0"))
    assert _stats(client, "cached_classes").inference_stats.cache_hit.count == after.cache_hit.count + 1


def test_shared_memory_requests_bypass_the_cache(client):
    key = f"/tg_rc_{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region("rc_in", key, 4)
    try:
        shm.set_shared_memory_region(handle, [np.array([[5.0]], np.float32)])
        client.register_system_shared_memory("rc_in", key, 4)
        inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_shared_memory("rc_in", 4)
        before = _stats(client, "cached").inference_stats
        for _ in range(2):
            assert client.infer("cached", [inp]).as_numpy("OUTPUT0")[0, 0] == 6.0
        after = _stats(client, "cached").inference_stats
        assert after.success.count - before.success.count == 2
        assert after.cache_hit.count == before.cache_hit.count
        assert after.cache_miss.count == before.cache_miss.count
    finally:
        client.unregister_system_shared_memory("rc_in")
        shm.destroy_shared_memory_region(handle)


# --------------------------------------------------------------------------- versions


def test_new_version_reload_and_unload_never_answer_stale(client, server, repo, raw):
    assert _answer(raw, "evolving", 1.0) == 2.0  # v1, computed
    assert _answer(raw, "evolving", 1.0) == 2.0  # v1, hit
    assert _stats(client, "evolving", "1").inference_stats.cache_hit.count == 1
    # A new version on disk, loaded: the default version is 2 and answers for itself.
    _write_version(repo, "evolving", 2)
    _load(client, "evolving")
    assert _answer(raw, "evolving", 1.0) == 3.0
    v2 = _stats(client, "evolving", "2").inference_stats
    assert (v2.cache_miss.count, v2.cache_hit.count) == (1, 0)
    # Version 2 rewritten in place (other files, same number), reloaded: a new version
    # object with entries of its own, never the old files' answers.
    _write_version(repo, "evolving", 2, constant=100)
    _load(client, "evolving")
    assert _answer(raw, "evolving", 1.0) == 101.0
    assert _answer(raw, "evolving", 1.0) == 101.0
    entries = _metric(_scrape(server), "nv_cache_num_entries")
    # Unloaded: its entries go at once; loaded again: computed again.
    client.unload_model("evolving")
    assert _metric(_scrape(server), "nv_cache_num_entries") < entries
    _load(client, "evolving")
    assert _answer(raw, "evolving", 1.0) == 101.0
    stats = _stats(client, "evolving", "2").inference_stats
    assert (stats.cache_miss.count, stats.cache_hit.count) == (1, 0)


def test_route_switch_answers_from_the_version_that_serves(server, raw):
    channel = grpc.insecure_channel(server.grpc_url)
    control = control_pb2_grpc.RoutingServiceStub(channel)

    def route(version: str) -> None:
        r = cpb.Route(name="rc_route", targets=[cpb.Target(model="routed", version=version,
                                                           weight=100)])
        control.SetRoute(cpb.SetRouteRequest(route=r), timeout=10)

    try:
        route("1")
        assert [_answer(raw, "rc_route", 5.0) for _ in range(2)] == [6.0, 6.0]
        route("2")
        assert [_answer(raw, "rc_route", 5.0) for _ in range(2)] == [7.0, 7.0]
        route("1")  # back: version 1 still serves, its own entries are right
        assert _answer(raw, "rc_route", 5.0) == 6.0
        # Pinned versions share the route's entries of the version that served.
        assert _answer(raw, "routed", 5.0, version="2") == 7.0
        reply = ipb.ModelInferResponse.FromString(raw(_request_bytes("rc_route", 5.0), timeout=10))
        assert (reply.model_name, reply.model_version) == ("routed", "1")
    finally:
        control.DeleteRoute(cpb.DeleteRouteRequest(name="rc_route"), timeout=10)
        channel.close()


def test_a_hit_is_compared_by_the_routes_shadow_like_a_computed_answer(server, raw):
    """Observers and shadows get a hit's outputs as after a run: a route to ``cached``
    mirrored to ``direct`` (the same adder) compares every answer, hits included."""
    channel = grpc.insecure_channel(server.grpc_url)
    control = control_pb2_grpc.RoutingServiceStub(channel)
    r = cpb.Route(name="rc_shadowed",
                  targets=[cpb.Target(model="cached", version="1", weight=100)],
                  shadow=cpb.Shadow(model="direct", version="1", fraction=1.0))
    control.SetRoute(cpb.SetRouteRequest(route=r), timeout=10)
    try:
        assert [_answer(raw, "rc_shadowed", 77.0) for _ in range(3)] == [78.0] * 3
        _wait(lambda: _metric(_scrape(server), "tensorgate_shadow_compared_total",
                              route="rc_shadowed", result="exact") == 3)
        assert not _metric(_scrape(server), "tensorgate_shadow_compared_total",
                           route="rc_shadowed", result="disagree")
    finally:
        control.DeleteRoute(cpb.DeleteRouteRequest(name="rc_shadowed"), timeout=10)
        channel.close()


# --------------------------------------------------------------------------- size, refusal


def test_eviction_by_size(repo):
    # An adder's answer counts about 0.9 KB: 4 KiB hold four.
    with start_server(repo, "--cache-size", "4K") as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        channel = grpc.insecure_channel(srv.grpc_url)
        call = channel.unary_unary(INFER)
        try:
            for value in range(10):
                _answer(call, "cached", float(value))
            text = _scrape(srv)
            assert _metric(text, "nv_cache_num_evictions") >= 6
            assert 1 <= _metric(text, "nv_cache_num_entries") <= 4
            assert _metric(text, "tensorgate_cache_bytes") <= 4096
            before = _stats(c, "cached").inference_stats
            _answer(call, "cached", 9.0)  # the most recent: still there
            _answer(call, "cached", 0.0)  # the first: evicted long ago
            after = _stats(c, "cached").inference_stats
            assert after.cache_hit.count - before.cache_hit.count == 1
            assert after.cache_miss.count - before.cache_miss.count == 1
        finally:
            channel.close()
            c.close()


def test_a_model_with_the_cache_needs_a_cache_size(repo, tmp_path):
    only = tmp_path / "repo"
    shutil.copytree(repo / "cached", only / "cached")
    with start_server(only) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            index = {m.name: m for m in c.get_model_repository_index().models}
        finally:
            c.close()
    assert index["cached"].state == "UNAVAILABLE"
    assert "response_cache" in index["cached"].reason
    assert "--cache-size" in index["cached"].reason


def test_tritons_cache_config_flag_is_the_size(repo, tmp_path):
    only = tmp_path / "repo"
    shutil.copytree(repo / "cached", only / "cached")
    with start_server(only, "--cache-config", "local,size=65536") as srv:
        text = _scrape(srv)
        assert _metric(text, "tensorgate_cache_capacity_bytes") == 65536


# --------------------------------------------------------------------------- Redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _redis_server():
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the "
                    "Redis tier of the response cache is not tested")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield port, client, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)


def _wait(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_redis_tier_is_shared_by_replicas_and_fails_soft(repo, tmp_path):
    pytest.importorskip("redis")
    only = tmp_path / "repo"
    for name in ("cached", "direct"):
        shutil.copytree(repo / name, only / name)
    with _redis_server() as (port, rclient, proc):
        url = f"redis://127.0.0.1:{port}/0"
        args = ("--cache-size", "1M", "--cache-redis-url", url, "--cache-redis-ttl-secs", "60",
                "--cache-redis-timeout-ms", "5000")  # a loaded CI machine is not a Redis down
        with start_server(only, *args) as a, start_server(only, *args) as b:
            for srv in (a, b):
                srv.wait_for_log("cached:1 shares answers through Redis")
            ca = grpc.insecure_channel(a.grpc_url)
            cb = grpc.insecure_channel(b.grpc_url)
            stats_b = grpcclient.InferenceServerClient(b.grpc_url)
            try:
                call_a, call_b = ca.unary_unary(INFER), cb.unary_unary(INFER)
                first = call_a(_request_bytes("cached", 2.5), timeout=10)  # A computes
                keys = []
                _wait(lambda: keys.extend(rclient.keys("tensorgate:rc1:cached:1:*")) or keys)
                assert len(keys) == 1
                assert 0 < rclient.ttl(keys[0]) <= 60
                from_b = call_b(_request_bytes("cached", 2.5), timeout=10)  # B: from Redis
                assert from_b == first
                s = _stats(stats_b, "cached")
                assert (s.inference_stats.cache_hit.count, s.inference_count) == (1, 0)
                text = _scrape(b)
                assert _metric(text, "tensorgate_cache_redis_operations_total",
                               outcome="get_hit") == 1
                # Redis gone: requests still succeed (computed), a warning says why.
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(10)
                for value in (30.0, 31.0, 32.0):
                    assert _answer(call_a, "cached", value) == value + 1
                a.wait_for_log("Redis at redis://127.0.0.1")
                assert a.log.count("response cache: Redis at") == 1  # rate-limited
                assert _answer(call_a, "cached", 30.0) == 31.0  # the local tier still hits
            finally:
                ca.close()
                cb.close()
                stats_b.close()
