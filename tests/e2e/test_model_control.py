"""RepositoryModelLoad / RepositoryModelUnload on a private copy of the test repository
(these tests change files on disk and what the server serves)."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from e2e_support import build_models, infer_input, model_ready, start_server, status_of


@pytest.fixture(scope="module")
def server(control_repo):
    with start_server(control_repo) as srv:
        yield srv


def _f32(*shape) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _state(client, name: str) -> set:
    return {e.state for e in client.get_model_repository_index().models if e.name == name}


@pytest.mark.timeout(60)
def test_unload_then_load(client):
    x = _f32(2, 3)
    client.unload_model("identity_fp32")
    assert not model_ready(client, "identity_fp32")
    with pytest.raises(InferenceServerException) as err:
        client.infer("identity_fp32", [infer_input("INPUT0", x)])
    assert status_of(err.value) == "UNAVAILABLE"
    assert "READY" not in _state(client, "identity_fp32")
    # Other models are untouched.
    assert client.is_model_ready("identity_fp64")

    client.load_model("identity_fp32")
    assert client.is_model_ready("identity_fp32")
    assert "READY" in _state(client, "identity_fp32")
    result = client.infer("identity_fp32", [infer_input("INPUT0", x)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


@pytest.mark.timeout(60)
def test_load_model_added_after_start(client, control_repo):
    src = control_repo / "identity_int16"
    dst = control_repo / "late_model"
    shutil.copytree(src, dst)
    config = dst / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "identity_int16"', 'name: "late_model"'))
    assert not model_ready(client, "late_model")

    client.load_model("late_model")
    assert client.is_model_ready("late_model")
    arr = np.array([[1, -2, 3]], dtype=np.int16)
    result = client.infer("late_model", [infer_input("INPUT0", arr)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), arr)
    assert result.get_response().model_name == "late_model"


@pytest.mark.timeout(60)
def test_load_picks_up_new_version(client, control_repo):
    x = np.array([[1.0]], dtype=np.float32)
    assert client.infer("versioned", [infer_input("INPUT0", x)]).as_numpy("OUTPUT0")[0, 0] == 4.0
    # versioned serves its latest version (3: INPUT0 + 3); add a version 4 (INPUT0 + 4).
    model = build_models.versioned_model("versioned", 4)
    (control_repo / "versioned" / "4").mkdir()
    (control_repo / "versioned" / "4" / "model.onnx").write_bytes(model.SerializeToString())

    client.load_model("versioned")
    result = client.infer("versioned", [infer_input("INPUT0", x)])
    assert result.get_response().model_version == "4"
    assert result.as_numpy("OUTPUT0")[0, 0] == 5.0
    with pytest.raises(InferenceServerException) as err:
        client.infer("versioned", [infer_input("INPUT0", x)], model_version="3")
    assert status_of(err.value) == "NOT_FOUND"


@pytest.mark.timeout(60)
def test_failed_new_version_keeps_old_one_serving(client, control_repo):
    x = _f32(2, 3)
    bad = control_repo / "fixed_shape" / "2"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"\x08\x07 definitely not an onnx model" * 10)
    with pytest.raises(InferenceServerException):
        client.load_model("fixed_shape")
    # The version that failed never takes traffic; version 1 keeps serving.
    assert client.is_model_ready("fixed_shape")
    result = client.infer("fixed_shape", [infer_input("INPUT0", x)])
    assert result.get_response().model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)


def test_load_unknown_model(client):
    with pytest.raises(InferenceServerException) as err:
        client.load_model("no_such_model")
    assert status_of(err.value) == "NOT_FOUND"


def test_load_corrupt_model_fails_with_reason(client):
    with pytest.raises(InferenceServerException) as err:
        client.load_model("corrupt_model")
    assert err.value.message()
    entries = [e for e in client.get_model_repository_index().models if e.name == "corrupt_model"]
    assert entries and all(e.state == "UNAVAILABLE" and e.reason for e in entries), entries
    assert client.is_model_ready("identity_fp64")


@pytest.mark.timeout(60)
def test_unload_with_requests_in_queue(server, client):
    """Requests queued when their model is unloaded finish (served, or UNAVAILABLE):
    none hangs, none gets another error."""
    import tritonclient.grpc.aio as aioclient

    async def one(c, i):
        try:
            r = await c.infer("slow_queue", [infer_input("INPUT0", np.full((1, 1), i, np.float32))])
            assert r.as_numpy("OUTPUT0")[0, 0] == i
            return "OK"
        except InferenceServerException as exc:
            return status_of(exc)

    async def run():
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            tasks = [asyncio.create_task(one(c, i)) for i in (1, 2)]
            await asyncio.sleep(0.5)  # both are now waiting in slow_queue's 3 s window
            await c.unload_model("slow_queue")
            return await asyncio.wait_for(asyncio.gather(*tasks), 20)

    outcomes = asyncio.run(run())
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert not model_ready(client, "slow_queue")
    with pytest.raises(InferenceServerException) as err:
        client.infer("slow_queue", [infer_input("INPUT0", np.ones((1, 1), np.float32))])
    assert status_of(err.value) == "UNAVAILABLE"
