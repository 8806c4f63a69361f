"""No model name and no link in the repository makes the server read outside it.

The layout (module scope, one server):

    base/outside/             a valid model beside the repository (the target of escapes)
    base/outside.onnx         a valid model file beside it
    base/repo/identity_fp32   an ordinary model
    base/repo/link_in   -> identity_fp32            a link inside: served
    base/repo/link_out  -> ../outside               a link leading out: skipped, refused
    base/repo/file_out/1/model.onnx -> ../../../outside.onnx     a file leading out
    base/repo/climb           config default_model_filename "../../../outside/1/model.onnx"
    base/repo/labels_out      an output label_filename "../../outside/labels.txt"
"""

from __future__ import annotations

import os
import shutil
import time

import grpc
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from e2e_support import infer_input, model_ready, start_server, status_of
from routes_support import Caller
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb

TRAVERSAL = "model name must not contain path traversal characters"
EMPTY = "Model name cannot be empty. Please enter a valid name to deploy."


def _copy_model(test_repo, dst):
    """identity_fp32 under another directory, its config without a name (so that any
    directory name, a link's included, is the model's)."""
    shutil.copytree(test_repo / "identity_fp32", dst)
    config = dst / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "identity_fp32"\n', ""))


@pytest.fixture(scope="module")
def layout(test_repo, tmp_path_factory):
    base = tmp_path_factory.mktemp("names")
    _copy_model(test_repo, base / "outside")
    (base / "outside" / "labels.txt").write_text("secret-a\nsecret-b\n")
    shutil.copy(test_repo / "identity_fp32" / "1" / "model.onnx", base / "outside.onnx")
    repo = base / "repo"
    _copy_model(test_repo, repo / "identity_fp32")
    os.symlink("identity_fp32", repo / "link_in")
    os.symlink(base / "outside", repo / "link_out")
    _copy_model(test_repo, repo / "file_out")
    os.remove(repo / "file_out" / "1" / "model.onnx")
    os.symlink(base / "outside.onnx", repo / "file_out" / "1" / "model.onnx")
    _copy_model(test_repo, repo / "climb")
    with open(repo / "climb" / "config.pbtxt", "a") as f:
        f.write('default_model_filename: "../../../outside/1/model.onnx"\n')
    _copy_model(test_repo, repo / "labels_out")
    config = repo / "labels_out" / "config.pbtxt"
    config.write_text(config.read_text().replace(
        'name: "OUTPUT0"', 'name: "OUTPUT0"\n  label_filename: "../../outside/labels.txt"', 1
    ))
    (repo / ".tensorgate").mkdir()  # the server's own state directory
    return base


@pytest.fixture(scope="module")
def server(layout):
    with start_server(layout / "repo", "--repository-poll-secs", "0.2") as srv:
        yield srv


def _index(client) -> dict:
    return {(m.name, m.version): (m.state, m.reason)
            for m in client.get_model_repository_index().models}


def _names(client) -> set:
    return {m.name for m in client.get_model_repository_index().models}


@pytest.mark.parametrize(
    "name, words",
    [
        ("../outside", TRAVERSAL),
        ("a/../../outside", TRAVERSAL),
        ("../../etc/passwd", TRAVERSAL),
        ("/etc", TRAVERSAL),
        ("identity_fp32/1", TRAVERSAL),
        ("identity_fp32/", TRAVERSAL),
        ("..", TRAVERSAL),
        (".", TRAVERSAL),
        (" ..", TRAVERSAL),
        (".. ", TRAVERSAL),
        ("..\\outside", TRAVERSAL),
        ("", EMPTY),
        (" ", EMPTY),
        ("\t\n", EMPTY),
        (" identity_fp32", "must not begin or end with whitespace"),
        ("identity_fp32\n", "must not begin or end with whitespace"),
        ("identity\x00fp32", "must not contain control characters (\\x00)"),
        ("identity\x1bfp32", "must not contain control characters (\\x1b)"),
    ],
)
def test_invalid_names_are_refused_and_leave_nothing(client, layout, name, words):
    before = _index(client)
    with pytest.raises(InferenceServerException) as err:
        client.load_model(name)
    assert status_of(err.value) == "INVALID_ARGUMENT", err.value
    assert words in str(err.value)
    assert _index(client) == before
    assert not model_ready(client, "outside")


def test_an_absolute_path_to_a_model_is_refused(client, layout):
    with pytest.raises(InferenceServerException) as err:
        client.load_model(str(layout / "outside"))
    assert status_of(err.value) == "INVALID_ARGUMENT"
    assert TRAVERSAL in str(err.value)
    assert "outside" not in {n.rsplit("/", 1)[-1] for n in _names(client)}


@pytest.mark.parametrize("name", ["model..1", "..my_model", "...", ".tensorgate", "_private"])
def test_valid_but_absent_names_are_not_found(client, name):
    """As in Triton's own QA: a name without separators is a name, not a path."""
    before = _index(client)
    with pytest.raises(InferenceServerException) as err:
        client.load_model(name)
    assert status_of(err.value) == "NOT_FOUND"
    assert "failed to poll from model repository" in str(err.value)
    assert _index(client) == before


@pytest.mark.parametrize("name", ["../outside", "..", "a/b", ""])
def test_unload_of_a_path_like_name_is_just_not_found(client, name):
    """Unload derives no path; Triton answers it without the traversal message."""
    with pytest.raises(InferenceServerException) as err:
        client.unload_model(name)
    assert status_of(err.value) == "NOT_FOUND"
    assert "traversal" not in str(err.value)


def test_a_link_leading_outside_is_skipped_and_refused(client, server):
    assert "link_out" not in _names(client)
    assert "leads outside the repository" in server.log
    with pytest.raises(InferenceServerException) as err:
        client.load_model("link_out")
    assert status_of(err.value) == "INVALID_ARGUMENT"
    assert "symbolic link that leads outside the repository" in str(err.value)
    assert "--allow-symlinks-outside-repository" in str(err.value)
    assert "link_out" not in _names(client)


def test_a_link_inside_the_repository_serves(client):
    assert client.is_model_ready("link_in")
    x = np.ones((1, 3), np.float32)
    out = client.infer("link_in", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
    "model, words",
    [
        ("file_out", "symbolic link that leads outside the repository"),
        ("climb", "must be a path inside the model directory (no absolute path, no '..')"),
        ("labels_out", "must be a path inside the model directory (no absolute path, no '..')"),
    ],
)
def test_files_a_model_names_stay_inside(client, model, words):
    assert not model_ready(client, model)
    reasons = [reason for (name, _), (_, reason) in _index(client).items() if name == model]
    assert any(words in r for r in reasons), reasons
    with pytest.raises(InferenceServerException) as err:
        client.load_model(model)
    assert words in str(err.value)
    assert not model_ready(client, model)


def test_polling_skips_a_link_added_later(client, server, layout):
    os.symlink(layout / "outside", layout / "repo" / "late_out")
    shutil.copytree(layout / "repo" / "identity_fp32", layout / "repo" / "late_in")
    deadline = time.monotonic() + 30
    while not model_ready(client, "late_in"):  # the poll that saw both has run
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    assert "late_out" not in _names(client)


def test_route_names_follow_the_same_rules(server):
    caller = Caller(server.grpc_url)
    try:
        for name in ("../x", "", " r", "r\x01"):
            route = cpb.Route(name=name, targets=[cpb.Target(model="identity_fp32",
                                                                  weight=100)])
            with pytest.raises(grpc.RpcError) as err:
                caller.control.SetRoute(cpb.SetRouteRequest(route=route), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "route name" in err.value.details().lower()
    finally:
        caller.close()


def test_the_flag_serves_links_leading_outside(layout):
    import tritonclient.grpc as grpcclient

    with start_server(layout / "repo", "--allow-symlinks-outside-repository") as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            assert c.is_model_ready("link_out")
            assert c.is_model_ready("file_out")
            # A config still may not climb out with '..', flag or not.
            assert not model_ready(c, "climb")
        finally:
            c.close()
