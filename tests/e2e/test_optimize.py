"""``tensorgate optimize`` end to end: INT8-dynamic and FP16 versions of a demo model
(simple_mlp) and of a small real convnet (bench/models.py) are measured and written,
one past its error limit is refused (and written when forced), the written versions
load and serve with their record in ModelConfig, and ``--rollout canary`` puts one on
trial on a running server: promoted while it agrees, rolled back when it does not."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from e2e_support import DEMO_REPOSITORY, REPO_ROOT, infer_input, start_server
from tensorgate import cli

pytestmark = pytest.mark.timeout(180)

ALL_VERSIONS = "version_policy: { all { } }\n"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from models import build_bench_repository  # bench/models.py: the convnet

    root = tmp_path_factory.mktemp("optimize")
    build_bench_repository(root / "bench")
    repo = root / "repo"
    shutil.copytree(DEMO_REPOSITORY / "simple_mlp", repo / "simple_mlp")
    shutil.copytree(root / "bench" / "convnet", repo / "convnet")
    for name in ("simple_mlp", "convnet"):
        config = repo / name / "config.pbtxt"
        config.write_text(config.read_text() + ALL_VERSIONS)
    rng = np.random.default_rng(7)
    np.savez(root / "mlp.npz", INPUT0=rng.standard_normal((128, 16)).astype(np.float32))
    np.savez(root / "conv.npz", INPUT0=rng.random((32, 3, 64, 64)).astype(np.float32))
    return repo


def optimize(capsys, repo: Path, *args: str) -> tuple[int, dict]:
    code = cli.main(["optimize", "--model-repository", str(repo), "--speed-secs", "0.2",
                     "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip().startswith("{") else {}


def test_versions_are_measured_written_or_refused(repo, capsys):
    data = str(repo.parent / "mlp.npz")
    code, record = optimize(capsys, repo, "--model", "simple_mlp", "--to", "int8-dynamic",
                            "--calibration", data, "--max-error", "0.5")
    assert code == 0, record
    assert record["version"] == 2 and record["written"] == str(repo / "simple_mlp" / "2")
    assert 0 < record["accuracy"]["max_abs"] < 0.5 and record["accuracy"]["rows"] == 128
    assert [s["batch"] for s in record["speed"]["batches"]] == [1, 32]
    assert record["result"]["bytes"] < record["from"]["bytes"]  # 8-bit weights
    on_disk = json.loads((repo / "simple_mlp" / "2" / "optimize.json").read_text())
    assert on_disk["method"] == "int8-dynamic" and on_disk["from"]["version"] == 1
    lineage = json.loads((repo / "simple_mlp" / "2" / "lineage.json").read_text())
    assert lineage["optimize.from_version"] == "1"

    conv = str(repo.parent / "conv.npz")
    code, record = optimize(capsys, repo, "--model", "convnet", "--to", "fp16",
                            "--calibration", conv, "--max-error", "0.01")
    assert code == 0, record
    assert record["accuracy"]["max_abs"] < 0.01 and record["accuracy"]["top1_agreement"] == 1.0

    # Past --max-error: refused, nothing written; forced: written, and the record says so.
    code, record = optimize(capsys, repo, "--model", "convnet", "--version", "1", "--to",
                            "int8-dynamic", "--calibration", conv, "--max-error", "1e-6")
    assert code == 1 and record["written"] is None
    assert "max absolute difference" in record["refused"][0]
    assert not (repo / "convnet" / "3").exists()
    code, record = optimize(capsys, repo, "--model", "convnet", "--version", "1", "--to",
                            "int8-dynamic", "--calibration", conv, "--max-error", "1e-6",
                            "--force")
    assert code == 0 and record["forced"] and (repo / "convnet" / "3" / "model.onnx").exists()
    # Without data (no --calibration, no version tests): a bad argument.
    assert cli.main(["optimize", "--model-repository", str(repo), "--model", "convnet",
                     "--version", "1", "--to", "fp16"]) == 2
    assert "no data to measure on" in capsys.readouterr().err


def _rollout_state(server, route: str):
    import grpc

    from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb
    from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = control_pb2_grpc.RoutingServiceStub(channel)
        return stub.GetRoute(cpb.GetRouteRequest(name=route), timeout=10).rollout


def _drive(client, route: str, server, until, timeout: float = 40.0):
    rng = np.random.default_rng(3)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        x = rng.standard_normal((1, 16)).astype(np.float32)
        client.infer(route, [infer_input("INPUT0", x)], client_timeout=10)
        state = _rollout_state(server, route)
        if until(state):
            return state
    raise AssertionError(f"rollout on {route} still {_rollout_state(server, route)}; "
                         f"log:\n{server.log[-3000:]}")


def test_written_versions_serve_and_go_on_trial(repo, capsys):
    import tritonclient.grpc as grpcclient

    from tensorgate.routing import rollout as ro

    with start_server(repo) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for name, versions in (("simple_mlp", "12"), ("convnet", "123")):
                for v in versions:
                    assert client.is_model_ready(name, v), server.log
            params = client.get_model_config("simple_mlp", "2").config.parameters
            assert params["optimize.method"].string_value == "int8-dynamic"
            assert params["optimize.from_version"].string_value == "1"
            x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
            outs = [client.infer("simple_mlp", [infer_input("INPUT0", x)], model_version=v)
                    .as_numpy("OUTPUT0") for v in ("1", "2")]
            assert outs[1].dtype == np.float32 and np.abs(outs[0] - outs[1]).max() < 0.5
            img = np.random.default_rng(2).random((1, 3, 64, 64)).astype(np.float32)
            conv = [client.infer("convnet", [infer_input("INPUT0", img)], model_version=v)
                    .as_numpy("OUTPUT0") for v in ("1", "2")]
            assert np.abs(conv[0] - conv[1]).max() < 0.01  # fp16 inside, fp32 at the edges

            trial = ["--url", server.grpc_url, "--shadow-fraction", "1", "--stages", "50,100",
                     "--hold-secs", "0.3", "--min-requests", "5", "--auto-promote",
                     "--calibration", str(repo.parent / "mlp.npz")]
            # FP16 agrees within --max-error: the canary reaches all traffic.
            code, record = optimize(capsys, repo, "--model", "simple_mlp", "--version", "1",
                                    "--to", "fp16", "--output-version", "10", "--rollout",
                                    "canary", "--route", "mlp_live", "--max-error", "0.01",
                                    *trial)
            assert code == 0, record
            assert record["rollout"]["route"]["rollout"]["state"] == ro.RUNNING
            state = _drive(client, "mlp_live", server, lambda s: s.state not in ro.ACTIVE)
            assert state.state == ro.PROMOTED, state
            # INT8 compared with an atol it cannot meet: the guard rolls it back.
            code, record = optimize(capsys, repo, "--model", "simple_mlp", "--version", "1",
                                    "--to", "int8-dynamic", "--output-version", "11",
                                    "--rollout", "canary", "--route", "mlp_strict",
                                    "--max-error", "0.5", "--shadow-atol", "1e-7",
                                    "--max-disagreement", "0.05", *trial)
            assert code == 0, record
            state = _drive(client, "mlp_strict", server, lambda s: s.state not in ro.ACTIVE)
            assert state.state == ro.ROLLED_BACK and "disagree" in state.reason, state
        finally:
            client.close()
