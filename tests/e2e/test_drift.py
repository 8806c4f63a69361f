"""Drift monitoring end to end: `tensorgate profile` writes a version's reference, the
served version raises tensorgate_drift_* past the threshold within one window of shifted
traffic and stays below it across windows of the reference distribution, and a canary
whose predictions drift from the stable version's rolls back (one that does not is
promoted). Windows are 1 s / 200 rows here (README, "Drift monitoring")."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import onnx
import pytest

from e2e_support import build_models, server_env, start_server
from routes_support import Caller, Hammer, route
from tensorgate._proto.inference import grpc_service_pb2 as ipb
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb

THRESHOLD = 0.25  # PSI: "a significant shift" by the usual rule of thumb
WINDOW_ROWS = 200
ROWS_PER_REQUEST = 40
CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 64
version_policy: {{ all {{ }} }}
input {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }}
output {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }}
"""


@pytest.fixture(scope="module")
def drift_repo(tmp_path_factory):
    """``drift``: versions 1 and 3 answer INPUT0 + 1, version 2 INPUT0 + 2, each profiled
    on N(0, 1) inputs; ``plain``: the same model without a profile."""
    root = tmp_path_factory.mktemp("drift") / "repo"
    for name, versions in (("drift", {1: 1, 2: 2, 3: 1}), ("plain", {1: 1})):
        for version, add in versions.items():
            (root / name / str(version)).mkdir(parents=True)
            onnx.save(build_models.versioned_model(name, add),
                      str(root / name / str(version) / "model.onnx"))
        (root / name / "config.pbtxt").write_text(CONFIG.format(name=name))
    data = root.parent / "reference.npz"
    np.savez(data, INPUT0=np.random.default_rng(7).standard_normal((2000, 1)).astype(np.float32))
    for version in (1, 2, 3):
        done = subprocess.run(
            [sys.executable, "-m", "tensorgate", "profile", "--model-repository", str(root),
             "--model", "drift", "--version", str(version), "--data", str(data)],
            capture_output=True, text=True, env=server_env(), timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert (root / "drift" / str(version) / "profile.json").is_file()
    return root


@pytest.fixture(scope="module")
def server(drift_repo):
    with start_server(drift_repo, "--drift-window-secs", "1", "--drift-window-rows",
                      str(WINDOW_ROWS)) as srv:
        yield srv


@pytest.fixture(scope="module")
def caller(server):
    c = Caller(server.grpc_url)
    yield c
    c.close()


def _body(model: str, x: np.ndarray, version: str = "") -> bytes:
    req = ipb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="INPUT0", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req.SerializeToString()


def _metrics(server) -> dict[str, float]:
    text = urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("tensorgate_drift_"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _labels(model="drift", version="1", feature=None) -> str:
    if feature is None:
        return f'{{model="{model}",version="{version}"}}'
    return f'{{feature="{feature}",model="{model}",version="{version}"}}'


def _one_window(server, caller, shift: float, rng) -> dict[str, float]:
    """Send one window of rows to drift:1; the metrics once that window closed."""
    key = "tensorgate_drift_windows_total" + _labels()
    before = _metrics(server).get(key, 0.0)
    for _ in range(WINDOW_ROWS // ROWS_PER_REQUEST):
        x = rng.standard_normal((ROWS_PER_REQUEST, 1)) + shift
        caller.infer(_body("drift", x, "1"))
    deadline = time.monotonic() + 5
    while True:
        seen = _metrics(server)
        if seen.get(key, 0.0) > before:
            return seen
        assert time.monotonic() < deadline, f"no drift window closed: {seen}"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_shifted_traffic_raises_the_gauges_and_the_reference_does_not(server, caller):
    rng = np.random.default_rng(11)
    scores = []
    for _ in range(8):  # the reference distribution: no false alarm, window after window
        seen = _one_window(server, caller, 0.0, rng)
        assert seen["tensorgate_drift_window_rows" + _labels()] == WINDOW_ROWS
        scores.append(seen["tensorgate_drift_score" + _labels()])
        assert seen["tensorgate_drift_ks" + _labels(feature="INPUT0[0]")] < 0.2, seen
    assert max(scores) < THRESHOLD, scores
    seen = _one_window(server, caller, 1.5, rng)  # one window of shifted inputs
    score = seen["tensorgate_drift_score" + _labels()]
    assert score > THRESHOLD, seen
    for feature in ("INPUT0[0]", "OUTPUT0[0]"):
        assert seen["tensorgate_drift_psi" + _labels(feature=feature)] > THRESHOLD
        assert seen["tensorgate_drift_ks" + _labels(feature=feature)] > 0.3
    assert seen["tensorgate_drift_rows_total" + _labels()] == 9 * WINDOW_ROWS
    assert seen["tensorgate_drift_dropped_total" + _labels()] == 0
    # a version without a profile is not monitored at all
    caller.infer(_body("plain", np.zeros((4, 1)), "1"))
    assert not any('model="plain"' in k for k in _metrics(server))


class _Load(Hammer):
    """Hammer's threads, each request a single row drawn from N(0, 1) (a constant row
    would itself drift from the profile)."""

    def __init__(self, url: str, name: str, threads: int = 4) -> None:
        super().__init__(url, b"", threads)
        rng = np.random.default_rng(3)
        self.bodies = [_body(name, rng.standard_normal((1, 1))) for _ in range(512)]
        self._next = itertools.count()

    def _work(self) -> None:
        with grpc.insecure_channel(self.url) as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            while not self._stop.is_set():
                body = self.bodies[next(self._next) % len(self.bodies)]
                try:
                    call(body, timeout=30)
                    with self._lock:
                        self.ok["sent"] += 1
                except grpc.RpcError as exc:
                    with self._lock:
                        self.errors[exc.code().name] += 1


def _rollout(caller, route_name: str, candidate: str):
    spec = cpb.RolloutSpec(candidate_model="drift", candidate_version=candidate,
                           stages=[50, 100], hold_secs=0.5, auto_promote=True,
                           guards=cpb.Guards(max_drift=0.5, min_requests=5))
    caller.control.StartRollout(cpb.StartRolloutRequest(route=route_name, spec=spec),
                                timeout=10)
    deadline = time.monotonic() + 20
    while True:
        status = caller.control.GetRoute(cpb.GetRouteRequest(name=route_name)).rollout
        if status.state not in ("RUNNING", "PAUSED") or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_canary_with_drifting_predictions_rolls_back(server, caller):
    caller.control.SetRoute(cpb.SetRouteRequest(route=route("drift-route", ("drift", "1", 100))),
                            timeout=10)
    with _Load(server.grpc_url, "drift-route") as load:
        status = _rollout(caller, "drift-route", "2")  # answers x + 2 where stable says x + 1
    assert status.state == "ROLLED_BACK", (status, server.log[-3000:])
    assert "drift guard" in status.reason and "OUTPUT0[0]" in status.reason, status.reason
    assert "differs from stable drift:1" in status.reason, status.reason
    assert not load.errors, load.errors
    r = caller.control.GetRoute(cpb.GetRouteRequest(name="drift-route"))
    assert [(t.model, t.version, t.weight) for t in r.targets] == [("drift", "1", 100)]
    events = caller.control.ListEvents(cpb.ListEventsRequest(route="drift-route")).events
    assert events[-1].kind == "rollback" and "drift guard" in events[-1].message


@pytest.mark.timeout(60)
def test_canary_without_drift_is_promoted(server, caller):
    caller.control.SetRoute(cpb.SetRouteRequest(route=route("calm-route", ("drift", "1", 100))),
                            timeout=10)
    with _Load(server.grpc_url, "calm-route"):
        status = _rollout(caller, "calm-route", "3")  # the same answers as stable
    assert status.state == "PROMOTED", status
