"""The CPU image, built from this checkout and run with podman (conftest.py says when).

- The image's metadata: a numeric user, SIGTERM to stop, `tensorgate health` as its
  HEALTHCHECK, a writable state directory.
- It serves a model repository mounted read-only over gRPC and HTTP (tritonclient), the
  answers equal ONNX Runtime's on the same model file, routes persist in the state
  directory, and the HEALTHCHECK passes.
- The HEALTHCHECK follows the configured port and TLS (another port, TLS on).
- `podman stop` (SIGTERM) under concurrent load: exit code 0, every request answered
  (a result, or UNAVAILABLE before the server accepted it), nothing lost.

Measurements (image size, time to ready, throughput against the same server outside the
container) are tools/container/measure.py's, not this test's.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import container_support as support
import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

STATE_DIR = "/var/lib/tensorgate"


@pytest.fixture
def running(image, model_repo):
    """Start containers of the image (serving ``model_repo`` read-only at /models);
    every one is removed at the end, its logs printed when the test failed."""
    started: list[support.Container] = []

    def start(*args: str, volumes: tuple[str, ...] = (), **kwargs) -> support.Container:
        container = support.start(image, "serve", "--model-repository", "/models", *args,
                                  volumes=(f"{model_repo}:/models:ro", *volumes), **kwargs)
        started.append(container)
        return container

    yield start
    for container in started:
        print(f"--- {container.name}\n{container.logs()[-3000:]}")
        container.remove()


def _mlp(model_repo, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_repo / "simple_mlp" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"INPUT0": x})[0]


def test_image_metadata(image):
    info = json.loads(support.podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "10001:10001"  # numeric: runAsNonRoot can check it
    assert config["StopSignal"] == "SIGTERM"
    assert info["Healthcheck"]["Test"][:3] == ["CMD", "tensorgate", "health"]
    assert f"TENSORGATE_STATE_DIR={STATE_DIR}" in config["Env"]
    assert {"8000/tcp", "8001/tcp", "8002/tcp"} <= set(config["ExposedPorts"])
    print(f"image {image}: {info['Size'] / 1e6:.0f} MB")


def test_serves_a_read_only_repository(running, model_repo):
    container = running()
    support.wait_serving(container)
    x = np.random.default_rng(7).standard_normal((3, 16)).astype(np.float32)
    expected = _mlp(model_repo, x)

    client = grpcclient.InferenceServerClient(container.url("grpc"))
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(client.infer("simple_mlp", [inp]).as_numpy("OUTPUT0"),
                               expected, rtol=1e-5, atol=1e-6)

    http = httpclient.InferenceServerClient(container.url("http"))
    assert http.is_server_ready()
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    np.testing.assert_allclose(http.infer("simple_mlp", [inp]).as_numpy("OUTPUT0"),
                               expected, rtol=1e-5, atol=1e-6)
    http.close()

    # The image's user, and its HEALTHCHECK (podman runs the image's command).
    assert container.exec("id", "-u").stdout.strip() == "10001"
    health = support.podman("healthcheck", "run", container.name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    seen = container.exec("tensorgate", "health")
    assert seen.returncode == 0 and "SERVING" in seen.stdout, seen.stdout + seen.stderr

    # Routes persist in the state directory: the repository is read-only.
    route = container.exec("tensorgate", "routes", "set", "mlp", "simple_mlp:1=100")
    assert route.returncode == 0, route.stdout + route.stderr
    state = container.exec("cat", f"{STATE_DIR}/routes.json")
    assert state.returncode == 0 and "simple_mlp" in state.stdout, state.stderr
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp]).get_response()
    assert (result.model_name, result.model_version) == ("simple_mlp", "1")
    client.close()
    assert not (model_repo / ".tensorgate").exists()


def test_healthcheck_follows_port_and_tls(running, tls):
    """Another gRPC port and TLS, set the way a deployment sets them (environment): the
    image's HEALTHCHECK passes, so it probed that port over TLS; the default port fails."""
    container = running(
        ports={"grpc": 9443},
        volumes=(f"{tls}:/tls:ro",),
        environment={"TENSORGATE_GRPC_PORT": "9443", "TENSORGATE_TLS_CERT": "/tls/tls.crt",
                     "TENSORGATE_TLS_KEY": "/tls/tls.key"},
    )
    deadline = time.monotonic() + 90
    while True:
        health = support.podman("healthcheck", "run", container.name, check=False)
        if health.returncode == 0:
            break
        assert time.monotonic() < deadline and container.running(), health.stdout + health.stderr
        time.sleep(0.5)
    on_default_port = container.exec("tensorgate", "health", "--grpc-port", "8001")
    assert on_default_port.returncode == 1, on_default_port.stdout + on_default_port.stderr

    # And from outside: TLS on the mapped port, SERVING.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials((tls / "tls.crt").read_bytes())
    with grpc.secure_channel(container.url("grpc"), creds) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


CLIENTS = 16


def test_stop_under_load_loses_nothing(running, model_repo):
    """`podman stop` sends the image's STOPSIGNAL (SIGTERM); the server drains and exits 0.
    Each client sends one request at a time, so once it was refused, its later calls
    reach a server that accepts nothing more (tests/e2e/test_shutdown.py, through the
    container's published port)."""
    container = running("--shutdown-grace-secs", "20")
    support.wait_serving(container)
    x = np.random.default_rng(11).standard_normal((1, 16)).astype(np.float32)
    expected = _mlp(model_repo, x)
    outcomes: collections.Counter = collections.Counter()
    other: list[str] = []
    lock = threading.Lock()
    stop_at = [float("inf")]

    def client(k: int) -> None:
        with grpc.insecure_channel(container.url("grpc")) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            refused_in_a_row, refused_before, i = 0, False, k * 1_000_000
            while refused_in_a_row < 3 and time.monotonic() < stop_at[0]:
                i += 1
                request = pb.ModelInferRequest(model_name="simple_mlp", id=str(i))
                request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
                request.raw_input_contents.append(x.tobytes())
                try:
                    reply = stub.ModelInfer(request, timeout=15)
                    got = np.frombuffer(reply.raw_output_contents[0], np.float32)
                    assert reply.id == str(i)
                    np.testing.assert_allclose(got, expected.ravel(), rtol=1e-5, atol=1e-6)
                    kind, refused_in_a_row = "ok", 0
                except grpc.RpcError as exc:
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        kind, refused_before = "refused", True
                        refused_in_a_row += 1
                    elif exc.code() == grpc.StatusCode.CANCELLED and refused_before:
                        kind = "dropped_by_grpc_stop_after_refusal"  # see test_shutdown.py
                    else:
                        kind = exc.code().name
                        with lock:
                            other.append(f"{exc.code().name}: {exc.details()}")
                with lock:
                    outcomes[kind] += 1

    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client, k) for k in range(CLIENTS)]
        time.sleep(2.0)
        before = outcomes["ok"]
        stopped = time.monotonic()
        exit_code = container.stop(grace_s=40)
        stop_s = time.monotonic() - stopped
        stop_at[0] = time.monotonic() + 10
        for future in futures:
            future.result()
    print(f"podman stop under load: exit {exit_code} after {stop_s:.2f} s; {dict(outcomes)}")
    assert before > 50, outcomes  # real load was running when the signal came
    assert not other, (outcomes, other[:5])
    assert outcomes["refused"] >= CLIENTS, outcomes
    assert exit_code == 0, container.logs()[-3000:]
    assert stop_s < 25, stop_s  # drained, not killed after the stop timeout
    assert "stopped" in container.logs()
