"""A model file damaged while the server polls the repository (issue 20, crash
recovery): the version that serves keeps serving, and the damage is reported.

One server with ``--model-control-mode poll`` and a short poll interval serves
``damaged`` version 1 (OUTPUT0 = INPUT0 + 1). Each case breaks the repository on disk,
waits several poll intervals while checking every answer, and looks for the failed
reload in RepositoryIndex (state and reason) and in the log. The cases run in order on
one server, each repairing what the one before broke.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from e2e_support import build_models, infer_input, start_server

POLL_S = 0.2
WATCH_S = 6 * POLL_S  # several polls after the damage


def _config(name: str) -> str:
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\n"
        'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage") / "repo"
    (root / "damaged" / "1").mkdir(parents=True)
    (root / "damaged" / "config.pbtxt").write_text(_config("damaged"))
    (root / "damaged" / "1" / "model.onnx").write_bytes(
        build_models.versioned_model("damaged", 1).SerializeToString())
    return root


@pytest.fixture(scope="module")
def server(repo):  # conftest's ``client`` connects to this one
    with start_server(repo, "--model-control-mode", "poll",
                      "--repository-poll-secs", str(POLL_S)) as srv:
        yield srv


def _serves_version_1(client, seconds: float) -> int:
    """Infer for ``seconds``, asserting every answer is version 1's; how many."""
    x = np.array([[2.0]], np.float32)
    n = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = client.infer("damaged", [infer_input("INPUT0", x)])
        assert result.get_response().model_version == "1"
        assert result.as_numpy("OUTPUT0")[0, 0] == 3.0
        n += 1
        time.sleep(0.02)
    return n


def _index(client) -> dict:
    return {e.version: (e.state, e.reason)
            for e in client.get_model_repository_index().models if e.name == "damaged"}


def _wait_for_index(client, version: str, state: str, timeout: float = 10.0) -> str:
    """Until ``version`` is READY with no failure reported, or UNAVAILABLE with one."""
    deadline = time.monotonic() + timeout
    while True:
        got = _index(client).get(version)
        if got is not None and got[0] == state and bool(got[1]) == (state != "READY"):
            return got[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"version {version} not {state} as expected: {_index(client)}")
        time.sleep(POLL_S / 2)


def _replace_in_place(path, data: bytes) -> None:
    """Rewrite the file itself (same inode), as a copy over it or a crashed writer does."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def _restore(client, server, repo, good: bytes) -> None:
    path = repo / "damaged" / "1" / "model.onnx"
    path.write_bytes(good)
    os.utime(path)  # a new mtime even on a coarse-grained clock: the poller reloads it
    _wait_for_index(client, "1", "READY")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_serving_version_survives_its_file_damaged(server, client, repo, damage):
    path = repo / "damaged" / "1" / "model.onnx"
    good = path.read_bytes()
    log_before = len(server.log)
    _serves_version_1(client, POLL_S)
    if damage == "truncated":
        _replace_in_place(path, good[: len(good) // 2])
    else:
        _replace_in_place(path, b"\x08\x07 not an onnx model at all " * 20)
    # The poller sees the change and tries to reload version 1; the attempt fails, and
    # the instance already loaded from the old bytes keeps answering, the whole time.
    assert _serves_version_1(client, WATCH_S) > 10
    assert client.is_model_ready("damaged")
    assert client.is_model_ready("damaged", "1")
    state, reason = _index(client)["1"]
    assert state == "READY", _index(client)  # it serves
    assert "reload failed" in reason and "kept serving" in reason, reason
    log = server.wait_for_log("model damaged version 1 failed to load")
    assert "model damaged version 1 failed to load" in log[log_before:]
    _restore(client, server, repo, good)
    assert _index(client)["1"] == ("READY", "")  # the repaired file cleared the report
    _serves_version_1(client, POLL_S)


@pytest.mark.timeout(60)
def test_serving_model_survives_its_config_damaged(server, client, repo):
    path = repo / "damaged" / "config.pbtxt"
    good = path.read_text()
    _serves_version_1(client, POLL_S)
    path.write_text(good.replace("max_batch_size: 8", "max_batch_size: eight"))
    os.utime(path)
    assert _serves_version_1(client, WATCH_S) > 10
    state, reason = _index(client)["1"]
    assert state == "READY", _index(client)
    assert "reload failed" in reason and "config.pbtxt" in reason, reason
    path.write_text(good)
    os.utime(path)
    _wait_for_index(client, "1", "READY")  # a good config clears the report


@pytest.mark.timeout(60)
def test_new_version_with_a_truncated_file_never_serves(server, client, repo):
    good = build_models.versioned_model("damaged", 2).SerializeToString()
    log_before = len(server.log)
    v2 = repo / "damaged" / "2"
    v2.mkdir()
    (v2 / "model.onnx").write_bytes(good[: len(good) // 3])
    # Version 2 is the latest and would replace version 1 (latest-1 policy): it fails to
    # load, so version 1 keeps serving and version 2 is listed UNAVAILABLE with why.
    reason = _wait_for_index(client, "2", "UNAVAILABLE")
    assert "model.onnx" in reason or "onnx" in reason.lower(), reason
    assert _serves_version_1(client, WATCH_S) > 10
    assert _index(client)["1"][0] == "READY"
    assert not client.is_model_ready("damaged", "2")
    log = server.wait_for_log("model damaged version 2 failed to load")
    assert "model damaged version 2 failed to load" in log[log_before:]
    # Completed (as a copy that was still under way when a poll saw it), version 2 loads
    # and takes over.
    (v2 / "model.onnx").write_bytes(good)
    os.utime(v2 / "model.onnx")
    _wait_for_index(client, "2", "READY")
    x = np.array([[2.0]], np.float32)
    result = client.infer("damaged", [infer_input("INPUT0", x)])
    assert result.get_response().model_version == "2"
    assert result.as_numpy("OUTPUT0")[0, 0] == 4.0
    assert server.proc.poll() is None
