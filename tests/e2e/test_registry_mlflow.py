"""The MLflow model registry as a repository source, against a real ``mlflow server``.

One ``mlflow server`` (SQLite backend store, local artifact store, served artifacts)
per module, installed by tests/tools/install_mlflow_server.sh into .tools/mlflow-venv
(skipped, saying so, where it is not); the test side registers models with the mlflow
client (``mlflow-skinny``). TensorGate reaches the registry through a TCP proxy in this
module, so "the registry is down" is the proxy refusing connections, and "back" is
it listening again on the same port. One TensorGate server syncs every registered model
tagged ``tensorgate=serve``, polling every 0.5 s.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from e2e_support import REPO_ROOT, build_models, infer_input, start_server

pytestmark = pytest.mark.timeout(180)

MLFLOW_ENV = "TENSORGATE_MLFLOW_SERVER"  # another mlflow executable (with mlflow.server)
TAG = ("tensorgate", "serve")
POLL = "0.5"
WAIT_S = 30.0


def _unused_port() -> int:
    """A free port below the kernel's ephemeral range (32768 and up), for a server that
    binds it only once it has started: a port 0 picked for another socket meanwhile
    cannot be this one."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _mlflow_executable() -> str:
    exe = os.environ.get(MLFLOW_ENV) or str(REPO_ROOT / ".tools" / "mlflow-venv" / "bin" / "mlflow")
    if not Path(exe).exists():
        pytest.skip(f"no mlflow server at {exe} (bash tests/tools/install_mlflow_server.sh "
                    f"installs one; or set {MLFLOW_ENV})")
    return exe


def _wait(predicate, what: str, timeout: float = WAIT_S, server=None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}"
                                 + (f"; server log:\n{server.log[-4000:]}" if server else ""))
        time.sleep(0.1)


class Proxy:
    """A TCP forwarder on a fixed loopback port that can refuse connections ("down")
    and listen again ("up")."""

    def __init__(self, upstream: "MlflowServer") -> None:
        self.upstream = upstream  # its port is read per connection (it may change once)
        self.port = 0  # the first up() picks it; later ones listen on it again
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class MlflowServer:
    """``mlflow server`` starting in the background: tests that need it call wait()."""

    def __init__(self, exe: str, root: Path) -> None:
        self.exe = exe
        self.root = root
        self.port = _unused_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [self.exe, "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts")],
            cwd=self.root, stdin=subprocess.DEVNULL,
            stdout=open(self.root / "server.log", "wb"), stderr=subprocess.STDOUT,
            # The server's job runner (huey consumers, for its GenAI jobs) is not needed
            # by a model registry and more than doubled its start here (12 s against 30).
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )

    def wait(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        retried = False
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            log = (self.root / "server.log").read_text(errors="replace")[-3000:] \
                if self.proc.poll() is not None else ""
            if not retried and "address already in use" in log:
                retried = True  # someone took the port while it started: another one
                self.port = _unused_port()
                self.uri = f"http://127.0.0.1:{self.port}"
                self.proc = self._start()
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start:\n" + log)
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(_mlflow_executable(), tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(mlflow_server):
    p = Proxy(mlflow_server)
    p.up()
    yield p
    p.down()


@pytest.fixture(scope="module")
def synced(proxy, tmp_path_factory):
    """TensorGate, started while the mlflow server still starts (its first polls fail
    and back off: a registry that is not there yet is no reason not to serve)."""
    repo = tmp_path_factory.mktemp("registry_repo")
    with start_server(repo, "--model-registry", f"mlflow://127.0.0.1:{proxy.port}",
                      "--registry-tag", "=".join(TAG), "--registry-poll-secs", POLL) as srv:
        yield srv, repo


@pytest.fixture(scope="module")
def registry(mlflow_server):
    mlflow = pytest.importorskip("mlflow")
    mlflow_server.wait()
    return mlflow.MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)


@pytest.fixture(scope="module")
def client(synced):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(synced[0].grpc_url)
    yield c
    c.close()


_experiment: list = []


def register(registry, tmp: Path, name: str, value: int, extra: dict | None = None,
             onnx_name: str = "model.onnx") -> tuple[int, str]:
    """Log a run whose ``model`` artifacts hold OUTPUT0 = INPUT0 + value (and ``extra``
    files), register it under ``name`` (tagged for the sync); (version, run id)."""
    import onnx

    if not _experiment:
        _experiment.append(registry.create_experiment(f"tensorgate-{time.time_ns()}"))
    try:
        registry.create_registered_model(name, tags=dict([TAG]))
    except Exception as exc:  # already registered
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    run = registry.create_run(_experiment[0])
    folder = tmp / f"{name}-{value}-{time.time_ns()}"
    folder.mkdir()
    onnx.save(build_models.versioned_model(name, value), folder / onnx_name)
    for rel, content in (extra or {}).items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    registry.log_artifacts(run.info.run_id, str(folder), "model")
    registry.set_terminated(run.info.run_id)
    mv = registry.create_model_version(name, f"{run.info.artifact_uri}/model",
                                       run_id=run.info.run_id)
    return int(mv.version), run.info.run_id


def answer(client, model: str, version: str = "", x: float = 10.0) -> tuple[str, float]:
    """(version that answered, OUTPUT0) for INPUT0 = x."""
    result = client.infer(model, [infer_input("INPUT0", np.array([[x]], np.float32))],
                          model_version=version, client_timeout=10)
    return result.get_response().model_version, float(result.as_numpy("OUTPUT0")[0, 0])


def ready(client, model: str, version: str) -> bool:
    from tritonclient.utils import InferenceServerException

    try:
        return client.is_model_ready(model, version)
    except InferenceServerException:
        return False


def metric(server, name: str) -> float | None:
    with urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


CONFIG = """name: "ignored: the sync names it"
platform: "onnxruntime_onnx"
max_batch_size: 8
input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }
output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }
"""

MLMODEL = """artifact_path: model
flavors:
  onnx:
    code: null
    data: net.onnx
    onnx_version: 1.16.0
    providers: [CPUExecutionProvider]
mlflow_version: 3.0.0
"""


def test_registered_versions_serve_with_their_lineage(synced, client, registry, tmp_path):
    server, repo = synced
    v1, run1 = register(registry, tmp_path, "reg_lineage", 1, {"config.pbtxt": CONFIG})
    # The onnx flavor's own layout: an MLmodel file naming the model file.
    v2, _ = register(registry, tmp_path, "reg_lineage", 2, {"MLmodel": MLMODEL},
                     onnx_name="net.onnx")
    _wait(lambda: ready(client, "reg_lineage", str(v1)) and ready(client, "reg_lineage", str(v2)),
          "both registered versions to serve", server=server)
    assert answer(client, "reg_lineage", str(v1)) == (str(v1), 11.0)
    assert answer(client, "reg_lineage", str(v2)) == (str(v2), 12.0)
    config = client.get_model_config("reg_lineage", str(v1)).config
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["mlflow.registered_model"] == "reg_lineage"
    assert params["mlflow.version"] == str(v1)
    assert params["mlflow.run_id"] == run1
    assert params["mlflow.source"].endswith(f"{run1}/artifacts/model")
    assert config.max_batch_size == 8  # the artifacts' config.pbtxt (version 1's)
    v2_params = client.get_model_config("reg_lineage", str(v2)).config.parameters
    assert v2_params["mlflow.version"].string_value == str(v2)
    assert (repo / "reg_lineage" / str(v2) / "MLmodel").exists()


def test_aliases_are_routes_that_follow_the_registry(synced, client, registry, tmp_path):
    from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb
    from tensorgate._proto.tensorgate.v1 import control_pb2_grpc
    import grpc

    server, repo = synced
    v1, _ = register(registry, tmp_path, "reg_alias", 1)
    v2, _ = register(registry, tmp_path, "reg_alias", 2)
    registry.set_registered_model_alias("reg_alias", "champion", str(v1))
    route = "reg_alias@champion"
    _wait(lambda: ready(client, route, ""), "the alias' route", server=server)
    assert answer(client, route)[0] == str(v1)
    # Moved in the registry, with who moved it: the route follows (a switch).
    registry.set_registered_model_tag("reg_alias", "tensorgate.alias.champion.moved_by", "alice")
    registry.set_registered_model_alias("reg_alias", "champion", str(v2))
    _wait(lambda: answer(client, route)[0] == str(v2), "the route to follow the alias",
          server=server)
    with grpc.insecure_channel(server.grpc_url) as channel:
        events = control_pb2_grpc.RoutingServiceStub(channel).ListEvents(
            cpb.ListEventsRequest(route=route), timeout=10).events
    assert any("reg_alias:2=100" in e.message and "by alice" in e.message for e in events), \
        [e.message for e in events]
    # Archived: unloaded and its directory gone; deleted: likewise.
    registry.transition_model_version_stage("reg_alias", str(v1), "Archived")
    v3, _ = register(registry, tmp_path, "reg_alias", 3)
    _wait(lambda: ready(client, "reg_alias", str(v3)), "version 3", server=server)
    registry.delete_model_version("reg_alias", str(v3))
    _wait(lambda: not ready(client, "reg_alias", str(v1)) and not ready(client, "reg_alias", str(v3)),
          "archived and deleted versions to unload", server=server)
    assert sorted(p.name for p in (repo / "reg_alias").iterdir() if p.name.isdigit()) == [str(v2)]
    assert answer(client, route)[0] == str(v2)  # the alias' version keeps serving


def test_a_version_failing_its_own_tests_never_serves(synced, client, registry, tmp_path):
    import io

    server, _ = synced
    v1, _ = register(registry, tmp_path, "reg_gate", 1)
    buf = io.BytesIO()  # expects INPUT0 + 1 from a version that adds 2
    np.savez(buf, INPUT0=np.ones((2, 1), np.float32),
             **{"expected/OUTPUT0": np.full((2, 1), 2.0, np.float32)})
    tests = {"tests/tests.json": '{"cases": [{"name": "adds one", "data": "case.npz"}]}',
             "tests/case.npz": buf.getvalue()}
    v2, _ = register(registry, tmp_path, "reg_gate", 2, tests)

    def refused():
        index = client.get_model_repository_index().models
        return [m for m in index if m.name == "reg_gate" and m.version == str(v2)
                and "version tests failed" in m.reason]

    _wait(refused, "version 2 to be refused by its tests", server=server)
    assert ready(client, "reg_gate", str(v1))
    assert answer(client, "reg_gate")[0] == str(v1)  # the default stays on version 1


def test_an_unreachable_registry_keeps_serving_and_is_retried(synced, client, registry,
                                                             proxy, tmp_path):
    server, _ = synced
    v1, _ = register(registry, tmp_path, "reg_down", 1)
    _wait(lambda: ready(client, "reg_down", str(v1)), "reg_down to serve", server=server)
    _wait(lambda: metric(server, "tensorgate_registry_up") == 1.0, "up == 1", server=server)
    errors_before = metric(server, "tensorgate_registry_errors_total")
    proxy.down()
    try:
        _wait(lambda: metric(server, "tensorgate_registry_up") == 0.0, "up == 0", server=server)
        assert metric(server, "tensorgate_registry_errors_total") > errors_before
        assert answer(client, "reg_down", str(v1)) == (str(v1), 11.0)  # still serving
        server.wait_for_log("unreachable")
        v2, _ = register(registry, tmp_path, "reg_down", 2)  # registered while we can't see
        time.sleep(0.6)
        assert not ready(client, "reg_down", str(v2))
    finally:
        proxy.up()
    _wait(lambda: ready(client, "reg_down", str(v2)), "the version registered meanwhile",
          server=server)
    _wait(lambda: metric(server, "tensorgate_registry_up") == 1.0, "up == 1 again",
          server=server)  # set once the poll that synced it finished
    assert "reachable again" in server.log
