"""A version's own tests gate it: versions whose known-answer case or slice check fails
never serve (nor replace the serving one, even when loaded under load), RepositoryIndex
says which check failed by how much, `tensorgate test` agrees offline, and a rollout to
such a version is refused with that reason."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from e2e_support import build_models, server_env, start_server
from routes_support import control_pb2_grpc, cpb

X = np.arange(8, dtype=np.float32).reshape(8, 1)


def _write_version(root, name, version, tests: dict | None, arrays: dict):
    """Version ``version`` of ``name`` (OUTPUT0 = INPUT0 + version) with its tests."""
    path = root / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.onnx").write_bytes(
        build_models.versioned_model(name, version).SerializeToString())
    if tests is not None:
        (path / "tests").mkdir(exist_ok=True)
        (path / "tests" / "tests.json").write_text(json.dumps(tests))
        for file, content in arrays.items():
            np.savez(path / "tests" / file, **content)


def _case(expected_offset: float) -> dict:
    return {"INPUT0": X, "expected/OUTPUT0": X + expected_offset}


def _labelled(offsets: dict) -> dict:
    """Labels = input + offset per segment (max_error against them per slice)."""
    segment = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    labels = X + np.where(segment == "a", offsets["a"], offsets["b"]).reshape(8, 1)
    return {"INPUT0": X, "label": labels.astype(np.float32), "segment": segment}


def _tests(with_slice: bool = True) -> dict:
    tests = {"cases": [{"name": "plus one", "data": "case.npz", "atol": 1e-6}]}
    if with_slice:
        tests["slices"] = [{"name": "error by segment", "data": "labelled.npz",
                            "output": "OUTPUT0", "labels": "label", "metric": "max_error",
                            "max": 0.1, "slice_by": "segment"}]
    return tests


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("gated")
    (root / "gated").mkdir()
    (root / "gated" / "config.pbtxt").write_text(
        build_models._versioned_config("gated", "version_policy: { all { } }\n"))
    # 1: passes; 2: its case expects +1 but it adds 2; 3: its case passes (expects +3),
    # its slice 'b' is labelled +2.5 (error 0.5 > 0.1).
    _write_version(root, "gated", 1, _tests(), {"case.npz": _case(1),
                                                 "labelled.npz": _labelled({"a": 1, "b": 1})})
    _write_version(root, "gated", 2, _tests(False), {"case.npz": _case(1)})
    _write_version(root, "gated", 3, _tests(), {"case.npz": _case(3),
                                                 "labelled.npz": _labelled({"a": 3, "b": 2.5})})
    (root / "swap").mkdir()
    (root / "swap" / "config.pbtxt").write_text(build_models._versioned_config("swap", ""))
    _write_version(root, "swap", 1, None, {})
    return root


@pytest.fixture(scope="module")
def server(repo):
    with start_server(repo) as srv:
        yield srv


def _index(client):
    return {(m.name, m.version): m for m in client.get_model_repository_index().models}


def test_failing_versions_never_serve_and_say_why(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    index = _index(client)
    assert index[("gated", "1")].state == "READY"
    v2 = index[("gated", "2")]
    assert v2.state == "UNAVAILABLE"
    assert "case 'plus one': OUTPUT0 differs by 1 at [0, 0]" in v2.reason, v2.reason
    assert "8 of 8 elements over" in v2.reason
    v3 = index[("gated", "3")]
    assert v3.state == "UNAVAILABLE"
    assert "slice 'error by segment': " in v3.reason, v3.reason
    assert "max_error 0.5 on segment=b (4 rows), needs <= 0.1" in v3.reason
    assert "segment=a" not in v3.reason  # the passing slice is not blamed
    assert client.is_model_ready("gated", "1") and not client.is_model_ready("gated", "3")
    assert "version tests passed" in server.log
    client.close()


def test_a_failing_version_never_replaces_the_serving_one_under_load(server, repo):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stop = threading.Event()
    errors, answers = [], []

    def load():
        c = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 1), np.float32))
        while not stop.is_set():
            try:
                answers.append(float(c.infer("swap", [inp]).as_numpy("OUTPUT0")[0, 0]))
            except Exception as exc:  # collected and asserted below
                errors.append(exc)
        c.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    # Version 2 appears with a case it fails: the load is refused, version 1 serves on.
    _write_version(repo, "swap", 2, _tests(False), {"case.npz": _case(1)})
    with pytest.raises(Exception) as err:
        client.load_model("swap")
    assert "version tests failed" in str(err.value)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert answers and set(answers) == {1.0}  # only version 1 ever answered
    assert _index(client)[("swap", "1")].state == "READY"
    client.close()


def test_a_rollout_to_a_failing_version_is_refused_with_the_reason(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = control_pb2_grpc.RoutingServiceStub(channel)
        route = cpb.Route(name="gate_route")
        route.targets.add(model="gated", version="1", weight=100)
        stub.SetRoute(cpb.SetRouteRequest(route=route), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.StartRollout(cpb.StartRolloutRequest(
                route="gate_route", spec=cpb.RolloutSpec(candidate_model="gated",
                                                         candidate_version="2")), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "version tests failed" in err.value.details()
        assert "case 'plus one'" in err.value.details()
        stub.DeleteRoute(cpb.DeleteRouteRequest(name="gate_route"), timeout=10)


def _test_cli(repo, *args):
    return subprocess.run([sys.executable, "-m", "tensorgate", "test", "--model-repository",
                           str(repo), *args], capture_output=True, text=True, timeout=120,
                          env=server_env())


def test_the_test_command_agrees_offline(repo):
    ok = _test_cli(repo, "--model", "gated", "--version", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS case 'plus one'" in ok.stdout and "PASS slice 'error by segment'" in ok.stdout
    bad = _test_cli(repo, "--model", "gated", "--version", "3", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert "segment=b" in report["error"]
    none = _test_cli(repo, "--model", "swap", "--version", "1")
    assert none.returncode == 0 and "no version tests" in none.stdout
    missing = _test_cli(repo, "--model", "nope")
    assert missing.returncode == 2 and "no model directory 'nope'" in missing.stderr
