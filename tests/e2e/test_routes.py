"""Routes end to end: weighted and sticky A/B, validation, shadow, canary with automatic
rollback, blue-green and hot swap under load, metrics, restart (tests/e2e/routes_support.py
sends raw ModelInfer bytes so 10,000 requests take seconds)."""

from __future__ import annotations

import shutil
import time
import urllib.request

import grpc
import pytest

from e2e_support import build_models, start_server
from routes_support import Caller, Hammer, binomial_bound, infer_request, route
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb

POLL_SECS = "0.2"


@pytest.fixture(scope="module")
def routes_repo(tmp_path_factory):
    return build_models.build_routes_repository(tmp_path_factory.mktemp("routes") / "repo")


@pytest.fixture(scope="module")
def server(routes_repo):
    with start_server(routes_repo, "--repository-poll-secs", POLL_SECS) as srv:
        yield srv


@pytest.fixture(scope="module")
def caller(server):
    c = Caller(server.grpc_url)
    yield c
    c.close()


def _set(caller, r, normalize=False):
    return caller.control.SetRoute(cpb.SetRouteRequest(route=r, normalize=normalize), timeout=10)


@pytest.mark.timeout(60)
def test_split_90_10_over_10000_requests(caller):
    _set(caller, route("split", ("canary", "1", 90), ("canary", "2", 10)))
    n = 10_000
    counts = caller.versions(infer_request("split"), n)
    assert sum(counts.values()) == n and set(counts) <= {"1", "2"}
    # Binomial(n, 0.1): within 4 sigma (~ 1 false failure in 16,000 runs).
    assert abs(counts["2"] - n * 0.1) <= binomial_bound(n, 0.1), counts
    # The response names what served it: the model, not the route.
    name, version, out = caller.infer(infer_request("split", 1.0))
    assert name == "canary" and out == 1.0 + int(version)


@pytest.mark.timeout(60)
def test_sticky_keys_keep_their_variant(caller):
    _set(caller, route("sticky", ("canary", "1", 50), ("canary", "2", 50), sticky=True))
    keys = [f"user-{i}" for i in range(300)]
    first = {k: caller.infer(infer_request("sticky", route_key=k))[1] for k in keys}
    assert set(first.values()) == {"1", "2"}
    for k in keys[:100]:  # the key as a parameter and as a header give the same variant
        assert caller.infer(infer_request("sticky", route_key=k))[1] == first[k]
        header = [("x-tensorgate-route-key", k)]
        assert caller.infer(infer_request("sticky"), metadata=header)[1] == first[k]
    # Weights change 50/50 -> 20/80: keys only move onto the grown variant, and about
    # the 30% that must (4 sigma of a binomial(300, 0.3): 90 +- 32).
    _set(caller, route("sticky", ("canary", "1", 20), ("canary", "2", 80), sticky=True))
    after = {k: caller.infer(infer_request("sticky", route_key=k))[1] for k in keys}
    moved = [k for k in keys if after[k] != first[k]]
    assert all(first[k] == "1" and after[k] == "2" for k in moved)
    assert abs(len(moved) - 90) <= 32, len(moved)


def test_changes_are_validated_as_a_whole(caller):
    cases = [
        (route("canary", ("swap", "", 100)), "INVALID_ARGUMENT", "model's name"),
        (route("x", ("canary", "1", 60), ("canary", "2", 60)), "INVALID_ARGUMENT", "120"),
        (route("x", ("nope", "", 100)), "NOT_FOUND", "unknown model 'nope'"),
        (route("x", ("canary", "9", 100)), "NOT_FOUND", "'canary' version 9 is not found"),
        (route("x", ("canary", "1", 50), ("other", "", 50)), "INVALID_ARGUMENT", "same inputs"),
    ]
    for r, code, text in cases:
        with pytest.raises(grpc.RpcError) as err:
            _set(caller, r)
        assert err.value.code().name == code and text in err.value.details(), err.value
    names = [r.name for r in caller.control.ListRoutes(cpb.ListRoutesRequest()).routes]
    assert "x" not in names
    reply = _set(caller, route("norm", ("canary", "1", 1), ("canary", "2", 3)), normalize=True)
    assert [t.weight for t in reply.route.targets] == [25, 75] and reply.notes
    meta = caller.metadata("norm")  # a route answers metadata for its heaviest target
    assert (meta.name, list(meta.versions)) == ("canary", ["2"])
    with pytest.raises(grpc.RpcError) as err:
        caller.control.GetRoute(cpb.GetRouteRequest(name="x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:  # a route picks the version itself
        caller.infer(infer_request("norm", version="1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _metric(server, name: str, **labels) -> float:
    text = urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.timeout(60)
def test_shadow_failures_never_reach_callers(server, caller):
    _set(caller, route("mirror", ("canary", "1", 100), shadow=("canary", "3", 1.0)))
    body = infer_request("mirror", 2.0)
    for _ in range(300):
        assert caller.infer(body) == ("canary", "1", 3.0)
    deadline = time.monotonic() + 10
    while _metric(server, "tensorgate_shadow_requests_total", route="mirror",
                  outcome="failed") < 300:
        assert time.monotonic() < deadline, "shadow failures were not counted"
        time.sleep(0.1)
    # A working shadow that answers differently: compared, counted as disagreement.
    _set(caller, route("mirror2", ("canary", "1", 100), shadow=("canary", "2", 1.0)))
    for _ in range(50):
        assert caller.infer(infer_request("mirror2"))[1] == "1"
    deadline = time.monotonic() + 10
    while _metric(server, "tensorgate_shadow_compared_total", route="mirror2",
                  result="disagree") < 50:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _metric(server, "tensorgate_shadow_max_abs_diff", route="mirror2") == 1.0
    assert _metric(server, "tensorgate_route_requests_total", route="mirror2",
                   variant="canary:1") == 50


@pytest.mark.timeout(60)
def test_canary_to_broken_version_rolls_back_by_itself(server, caller):
    _set(caller, route("canary-route", ("canary", "1", 100)))
    min_requests, threads = 10, 4
    spec = cpb.RolloutSpec(candidate_model="canary", candidate_version="3",
                           stages=[20, 50, 100], hold_secs=2,
                           guards=cpb.Guards(min_requests=min_requests, max_error_rate=0.05))
    with Hammer(server.grpc_url, infer_request("canary-route"), threads) as hammer:
        hammer.wait_for(200)
        caller.control.StartRollout(cpb.StartRolloutRequest(route="canary-route", spec=spec))
        deadline = time.monotonic() + 20
        while True:
            status = caller.control.GetRoute(cpb.GetRouteRequest(name="canary-route")).rollout
            if status.state != "RUNNING" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        hammer.wait_for(300)
    assert status.state == "ROLLED_BACK" and "error rate" in status.reason, status
    # The guard's allowance: min_requests candidate failures, plus one in flight per
    # client thread when the route flipped back.
    assert sum(hammer.errors.values()) <= min_requests + threads, hammer.errors
    assert set(hammer.errors) <= {"INTERNAL"}, hammer.messages
    assert hammer.ok["1"] > 0
    r = caller.control.GetRoute(cpb.GetRouteRequest(name="canary-route"))
    assert [(t.model, t.version, t.weight) for t in r.targets] == [("canary", "1", 100)]
    events = caller.control.ListEvents(cpb.ListEventsRequest(route="canary-route")).events
    assert events[-1].kind == "rollback" and "error rate" in events[-1].message


@pytest.mark.timeout(60)
def test_blue_green_switch_under_load_fails_nothing(server, caller):
    _set(caller, route("bg", ("canary", "1", 100)))
    with Hammer(server.grpc_url, infer_request("bg")) as hammer:
        for version in ("2", "1", "2"):
            hammer.wait_for(150)
            _set(caller, route("bg", ("canary", version, 100)))
        hammer.wait_for(150)
    assert not hammer.errors, (hammer.errors, hammer.messages)
    assert hammer.ok["1"] > 0 and hammer.ok["2"] > 0


@pytest.mark.timeout(60)
def test_version_hot_swap_under_load_fails_nothing(server, routes_repo):
    model_dir = routes_repo / "swap"

    def add_version(v: int) -> None:
        staging = model_dir / f".staging-{v}"  # hidden: the poller ignores it
        staging.mkdir()
        (staging / "model.onnx").write_bytes(
            build_models.versioned_model("swap", v).SerializeToString())
        staging.rename(model_dir / str(v))

    def wait_serving(hammer, v: str) -> None:
        deadline = time.monotonic() + 20
        start = hammer.ok[v]
        while hammer.ok[v] - start < 50:
            assert time.monotonic() < deadline, (hammer.ok, hammer.errors)
            time.sleep(0.02)

    with Hammer(server.grpc_url, infer_request("swap")) as hammer:
        hammer.wait_for(100)
        add_version(2)  # latest-1 policy: 2 replaces 1, which drains
        wait_serving(hammer, "2")
        add_version(3)
        wait_serving(hammer, "3")
        shutil.rmtree(model_dir / "2")
        shutil.rmtree(model_dir / "1")
        hammer.wait_for(100)
    assert not hammer.errors, (hammer.errors, hammer.messages)
    assert hammer.ok["1"] and hammer.ok["2"] and hammer.ok["3"]


@pytest.mark.timeout(90)
def test_restart_keeps_routes(tmp_path):
    repo = build_models.build_routes_repository(tmp_path / "repo")
    spec = route("kept", ("canary", "1", 30), ("canary", "2", 70), sticky=True)
    keys = [f"user-{i}" for i in range(100)]
    with start_server(repo) as srv:
        c = Caller(srv.grpc_url)
        _set(c, spec)
        # A weight change makes the key ranges history, not a function of the weights.
        spec.targets[0].weight, spec.targets[1].weight = 60, 40
        saved = _set(c, spec).route
        variants = [c.infer(infer_request("kept", route_key=k))[1] for k in keys]
        c.close()
    assert (repo / ".tensorgate" / "routes.json").exists()
    with start_server(repo) as srv:
        c = Caller(srv.grpc_url)
        assert c.control.GetRoute(cpb.GetRouteRequest(name="kept")) == saved
        assert [c.infer(infer_request("kept", route_key=k))[1] for k in keys] == variants
        c.close()


def _warmup_config(data_type: str) -> str:
    return (
        'name: "warm"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'output { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] }\n'
        'model_warmup { name: "zeros" batch_size: 2 count: 3 inputs { key: "INPUT0" value: '
        f'{{ data_type: {data_type} dims: [ 1 ] zero_data: true }} }} }}\n'
    )


@pytest.mark.timeout(60)
def test_polling_loads_new_models_with_config_warmup(server, caller, routes_repo):
    """A model directory that appears is loaded (config model_warmup run first); a change
    whose warm-up fails never takes traffic and the serving version stays."""
    staging = routes_repo / ".staging-warm"
    (staging / "1").mkdir(parents=True)
    (staging / "1" / "model.onnx").write_bytes(
        build_models.versioned_model("warm", 1).SerializeToString())
    (staging / "config.pbtxt").write_text(_warmup_config("TYPE_FP32"))
    staging.rename(routes_repo / "warm")
    deadline = time.monotonic() + 20
    while True:
        try:
            assert caller.infer(infer_request("warm", 1.0)) == ("warm", "1", 2.0)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, server.log[-2000:]
            time.sleep(0.1)
    assert "warm:1: 1 model_warmup sample(s) ran" in server.log
    (routes_repo / "warm" / "config.pbtxt").write_text(_warmup_config("TYPE_INT32"))
    deadline = time.monotonic() + 20
    while "model_warmup 'zeros' failed" not in server.log:
        assert time.monotonic() < deadline, server.log[-2000:]
        time.sleep(0.1)
    assert caller.infer(infer_request("warm", 1.0)) == ("warm", "1", 2.0)
