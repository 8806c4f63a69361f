"""Pipelines (Triton's ensembles) end to end: steps run inside the server, each on its
own model's batcher and statistics; pipelines that don't fit together are refused at
load naming the step and tensor; a failing step answers with its name."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from e2e_support import build_models, start_server
from routes_support import control_pb2_grpc, cpb


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_models.build_pipeline_repository(tmp_path_factory.mktemp("pipelines"))
    with start_server(repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def _x(client_lib, values):
    inp = client_lib.InferInput("X", list(values.shape), "FP32")
    inp.set_data_from_numpy(values)
    return [inp]


def _count(client, model) -> int:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"].get("success", {}).get("count", 0))


def test_steps_run_in_order_inside_the_server(server, client):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    before = (_count(client, "double"), _count(client, "add_one"))
    result = client.infer("double_then_add", _x(grpcclient, x))
    np.testing.assert_array_equal(result.as_numpy("Y"), x * 2 + 1)
    assert result.get_response().model_name == "double_then_add"
    after = (_count(client, "double"), _count(client, "add_one"))
    assert after == (before[0] + 1, before[1] + 1)  # each step counted on its model
    http = httpclient.InferenceServerClient(server.http_url)
    np.testing.assert_array_equal(
        http.infer("double_then_add", _x(httpclient, x)).as_numpy("Y"), x * 2 + 1)
    http.close()
    meta = client.get_model_metadata("double_then_add")
    assert meta.platform == "ensemble" and [i.name for i in meta.inputs] == ["X"]
    config = client.get_model_config("double_then_add").config
    assert len(config.ensemble_scheduling.step) == 2


def test_independent_steps_fan_out(client):
    x = np.ones((1, 4), np.float32)
    result = client.infer("fan_out", _x(grpcclient, x))
    np.testing.assert_array_equal(result.as_numpy("A"), x * 2)
    np.testing.assert_array_equal(result.as_numpy("B"), x + 1)


@pytest.mark.parametrize("name, words", [
    ("bad_missing_model", "step 0 ('nope'): Request for unknown model: 'nope' is not found"),
    ("bad_dtype", "step 0 ('double'): input 'INPUT0' is TYPE_FP32, but tensor 'X' from "
                  "ensemble input is TYPE_INT32"),
    ("bad_unmapped", "step 0 ('double'): input 'INPUT0' of 'double' is not in its input_map"),
    ("bad_cycle", "waits on itself"),
    ("bad_no_output", "ensemble output 'Y' is made by no step's output_map"),
    ("bad_shape", "input 'INPUT0' has dims [4], but tensor 'X' from ensemble input has [3]"),
])
def test_pipelines_that_do_not_fit_are_refused_naming_the_step(client, name, words):
    index = {m.name: m for m in client.get_model_repository_index().models}
    assert index[name].state == "UNAVAILABLE"
    assert words in index[name].reason, index[name].reason
    assert index["double_then_add"].state == "READY"


def test_a_failing_step_answers_with_its_name(client):
    x = np.ones((1, 3), np.float32)  # the ensemble says [4]: refused before any step
    with pytest.raises(InferenceServerException) as err:
        client.infer("double_then_add", _x(grpcclient, x))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.unload_model("add_one")  # the second step's model goes away
    try:
        with pytest.raises(InferenceServerException) as err:
            client.infer("double_then_add", _x(grpcclient, np.ones((1, 4), np.float32)))
        assert "ensemble 'double_then_add' step 1 ('add_one')" in err.value.message()
        assert err.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
    finally:
        client.load_model("add_one")
    np.testing.assert_array_equal(
        client.infer("double_then_add", _x(grpcclient, np.ones((1, 4), np.float32)))
        .as_numpy("Y"), np.full((1, 4), 3.0, np.float32))


def test_a_route_can_point_at_a_pipeline(server, client):
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = control_pb2_grpc.RoutingServiceStub(channel)
        route = cpb.Route(name="embed")
        route.targets.add(model="double_then_add", weight=100)
        stub.SetRoute(cpb.SetRouteRequest(route=route), timeout=10)
        x = np.full((1, 4), 5.0, np.float32)
        result = client.infer("embed", _x(grpcclient, x))
        np.testing.assert_array_equal(result.as_numpy("Y"), x * 2 + 1)
        assert result.get_response().model_name == "double_then_add"
        stub.DeleteRoute(cpb.DeleteRouteRequest(name="embed"), timeout=10)
