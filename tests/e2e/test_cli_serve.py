"""The ``tensorgate serve`` command line: the bundled demo repository, environment
variables, the console script and shutdown on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import model_config_pb2 as mc

from e2e_support import (
    DEMO_REPOSITORY,
    build_models,
    infer_input,
    model_ready,
    server_env,
    start_server,
)

DEMO_MODELS = ("simple_mlp", "multi_io", "text_lower")


@pytest.fixture(scope="module")
def demo_server():
    with start_server(None) as srv:  # no --model-repository: the bundled demo
        yield srv


@pytest.fixture(scope="module")
def demo_client(demo_server):
    c = grpcclient.InferenceServerClient(demo_server.grpc_url)
    yield c
    c.close()


def _oracle(model: str, feeds: dict) -> dict:
    return build_models.run_onnx(DEMO_REPOSITORY / model / "1" / "model.onnx", feeds)


# --------------------------------------------------------------------------- demo


def test_demo_models_ready(demo_client):
    assert demo_client.is_server_live()
    assert demo_client.is_server_ready()
    for name in DEMO_MODELS:
        assert demo_client.is_model_ready(name), name
    index = {(e.name, e.state) for e in demo_client.get_model_repository_index().models}
    assert {(name, "READY") for name in DEMO_MODELS} <= index


def test_demo_simple_mlp(demo_client):
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    result = demo_client.infer("simple_mlp", [infer_input("INPUT0", x)])
    got = result.as_numpy("OUTPUT0")
    assert got.shape == (5, 8) and got.dtype == np.float32
    np.testing.assert_allclose(
        got, _oracle("simple_mlp", {"INPUT0": x})["OUTPUT0"], rtol=1e-5, atol=1e-5
    )
    cfg = demo_client.get_model_config("simple_mlp").config
    assert cfg.max_batch_size == 64
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 200
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]


def test_demo_multi_io(demo_client):
    feeds = {
        "FEATURES": np.array([[0.5, 1.5, -2.0, 4.0], [1.0, 2.0, 3.0, 4.0]], dtype=np.float32),
        "COUNTS": np.array([[1, 2, 3, 4], [-5, 0, 7, 2**40]], dtype=np.int64),
        "MASK": np.array([[True, False, True, False], [False] * 4]),
    }
    result = demo_client.infer("multi_io", [infer_input(k, v) for k, v in feeds.items()])
    want = _oracle("multi_io", feeds)
    for name, dtype in (
        ("WEIGHTED", np.float64),
        ("MASKED_COUNTS", np.int32),
        ("ANY_MASKED", np.bool_),
    ):
        got = result.as_numpy(name)
        assert got.dtype == dtype, name
        np.testing.assert_array_equal(got, want[name])
    np.testing.assert_array_equal(result.as_numpy("ANY_MASKED"), [[True], [False]])
    meta = demo_client.get_model_metadata("multi_io")
    assert {(t.name, t.datatype) for t in meta.inputs} == {
        ("FEATURES", "FP32"),
        ("COUNTS", "INT64"),
        ("MASK", "BOOL"),
    }
    assert {(t.name, t.datatype) for t in meta.outputs} == {
        ("WEIGHTED", "FP64"),
        ("MASKED_COUNTS", "INT32"),
        ("ANY_MASKED", "BOOL"),
    }


def test_demo_text_lower(demo_client):
    text = np.array([b"Hello", b"WORLD", b"MiXeD 123", b""], dtype=np.object_)
    result = demo_client.infer("text_lower", [infer_input("TEXT", text)])
    assert list(result.as_numpy("TEXT_LOWER")) == [b"hello", b"world", b"mixed 123", b""]
    np.testing.assert_array_equal(result.as_numpy("LENGTH"), [4])
    want = _oracle("text_lower", {"TEXT": text})
    assert list(result.as_numpy("TEXT_LOWER")) == list(want["TEXT_LOWER"])


def test_demo_metrics_endpoint(demo_server, demo_client):
    demo_client.infer("simple_mlp", [infer_input("INPUT0", np.zeros((1, 16), np.float32))])
    with urllib.request.urlopen(demo_server.metrics_url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'model="simple_mlp"' in text


# --------------------------------------------------------------------------- settings


def test_environment_variables_configure_the_server(test_repo):
    env = server_env(
        TENSORGATE_HOST="127.0.0.1",
        TENSORGATE_GRPC_PORT="0",
        TENSORGATE_HTTP_PORT="0",
        TENSORGATE_METRICS_PORT="0",
        TENSORGATE_MODEL_REPOSITORY=str(test_repo),
    )
    with start_server(None, env=env, default_ports=False) as srv:
        assert srv.grpc_port not in (0, 8001)
        assert srv.metrics_port not in (0, 8002)
        assert srv.http_port not in (0, 8000)
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            assert c.is_model_ready("identity_fp32")  # from the test repository, not the demo
            assert not model_ready(c, "simple_mlp")


def test_flags_override_environment(test_repo):
    env = server_env(TENSORGATE_GRPC_PORT="1", TENSORGATE_METRICS_PORT="1")  # unusable ports
    with start_server(test_repo, env=env) as srv:  # --grpc-port 0 --metrics-port 0
        assert srv.grpc_port not in (0, 1)
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            assert c.is_server_live()


def test_console_script(test_repo):
    script = Path(sys.executable).with_name("tensorgate")
    path = str(script) if script.exists() else shutil.which("tensorgate")
    assert path, "the install must put a `tensorgate` command on the PATH"
    with start_server(test_repo, command=[path]) as srv:
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            assert c.is_model_ready("identity_fp32")


def test_bad_flag_exits_nonzero():
    proc = subprocess.run(
        [sys.executable, "-m", "tensorgate", "serve", "--grpc-port", "not-a-port"],
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "grpc" in (proc.stderr + proc.stdout).lower()


# --------------------------------------------------------------------------- shutdown


@pytest.mark.timeout(60)
def test_sigterm_stops_cleanly(test_repo):
    with start_server(test_repo) as srv:
        with grpcclient.InferenceServerClient(srv.grpc_url) as c:
            c.infer("identity_fp32", [infer_input("INPUT0", np.ones((1, 2), np.float32))])
        t0 = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        code = srv.proc.wait(15)
        assert code == 0, srv.log
        assert time.monotonic() - t0 < 10
