"""The control plane from outside: the ``tensorgate routes`` command, the admin role,
manual rollout steps and the events log."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import pytest

from e2e_support import build_models, server_env, start_server
from routes_support import Caller, infer_request
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb
from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

ADMIN_TOKEN = "admin-secret-token"
INFER_TOKEN = "infer-only-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = build_models.build_routes_repository(tmp_path_factory.mktemp("ctl") / "repo")
    env = server_env(TENSORGATE_AUTH_TOKENS=f"{ADMIN_TOKEN} admin;{INFER_TOKEN} infer")
    with start_server(repo, env=env) as srv:
        yield srv


def _cli(server, *args, token=ADMIN_TOKEN):
    cmd = [sys.executable, "-m", "tensorgate", "routes", "--url", server.grpc_url]
    if token:
        cmd += ["--token", token]
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30,
                          env=server_env())
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.timeout(60)
def test_cli_set_list_switch_delete(server):
    rc, out, err = _cli(server, "set", "ab", "canary:1=90", "canary:2=10", "--sticky")
    assert rc == 0, err
    assert json.loads(out)["routes"][0]["sticky"] is True
    rc, out, _ = _cli(server, "list")
    listed = json.loads(out)
    assert [r["name"] for r in listed["routes"]] == ["ab"] and listed["events"] == []
    rc, out, _ = _cli(server, "get", "ab")
    assert rc == 0 and json.loads(out)["routes"] == listed["routes"]
    rc, out, err = _cli(server, "set", "bad", "canary:1=50")
    assert rc == 1 and "INVALID_ARGUMENT" in err and "add up to 50" in err
    rc, out, err = _cli(server, "switch", "ab", "canary:2")
    assert rc == 0, err
    assert json.loads(out)["routes"][0]["targets"] == [
        {"model": "canary", "version": "2", "weight": 100.0}]
    # Connection options after the action work too, and every action has one shape.
    cmd_tail = ["--url", server.grpc_url, "--token", ADMIN_TOKEN]
    proc = subprocess.run([sys.executable, "-m", "tensorgate", "routes", "events", "ab",
                           *cmd_tail], capture_output=True, text=True, timeout=30,
                          env=server_env())
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert [e["kind"] for e in shown["events"]] == ["set", "set"] and shown["routes"] == []
    rc, out, _ = _cli(server, "delete", "ab")
    assert rc == 0 and json.loads(out) == {"routes": [], "events": []}
    rc, _, err = _cli(server, "get", "ab")
    assert rc == 1 and "NOT_FOUND" in err


def test_control_plane_needs_the_admin_role(server):
    rc, _, err = _cli(server, "list", token=INFER_TOKEN)
    assert rc == 1 and "PERMISSION_DENIED" in err
    rc, _, err = _cli(server, "list", token=None)
    assert rc == 1 and "UNAUTHENTICATED" in err


@pytest.mark.timeout(60)
def test_manual_rollout_pause_promote(server):
    admin = [("authorization", f"Bearer {ADMIN_TOKEN}")]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = control_pb2_grpc.RoutingServiceStub(channel)
        r = cpb.Route(name="rc")
        r.targets.add(model="canary", version="1", weight=100)
        stub.SetRoute(cpb.SetRouteRequest(route=r), metadata=admin)
        spec = cpb.RolloutSpec(candidate_model="canary", candidate_version="2", stages=[30],
                               hold_secs=600)
        reply = stub.StartRollout(cpb.StartRolloutRequest(route="rc", spec=spec), metadata=admin)
        assert [t.weight for t in reply.route.targets] == [70, 30]
        assert reply.route.rollout.state == "RUNNING"
        paused = stub.PauseRollout(cpb.PauseRolloutRequest(route="rc"), metadata=admin)
        assert paused.route.rollout.state == "PAUSED"
        with pytest.raises(grpc.RpcError) as err:
            stub.StartRollout(cpb.StartRolloutRequest(route="rc", spec=spec), metadata=admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        done = stub.PromoteRollout(cpb.PromoteRolloutRequest(route="rc"), metadata=admin)
        assert done.route.rollout.state == "PROMOTED"
        assert [(t.version, t.weight) for t in done.route.targets] == [("2", 100)]
        c = Caller(server.grpc_url)
        try:
            assert c.infer(infer_request("rc"), metadata=[
                ("authorization", f"Bearer {INFER_TOKEN}")])[:2] == ("canary", "2")
        finally:
            c.close()
        kinds = [e.kind for e in stub.ListEvents(cpb.ListEventsRequest(route="rc"),
                                                 metadata=admin).events]
        assert kinds == ["set", "rollout_start", "pause", "promote"]


def test_reflection_describes_the_routing_service(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.grpc_url) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        assert "tensorgate.v1.RoutingService" in set(db.get_services())
        service = DescriptorPool(db).FindServiceByName("tensorgate.v1.RoutingService")
        assert {"SetRoute", "StartRollout", "ListEvents"} <= {m.name for m in service.methods}
