"""The registry sync without a registry: a fake source stands in for MLflow, while the
repository (real ONNX models, loaded in-process) and the route manager are the real
ones. The real MLflow server is tests/e2e/test_registry_mlflow.py's."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import onnx
import pytest

from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.registry import route_name
from tensorgate.registry.metrics import RegistryCollector
from tensorgate.registry.mlflow_source import (
    RegisteredModel,
    RegistryUnavailable,
    VersionInfo,
    VersionUnusable,
    shown,
    tracking_uri,
)
from tensorgate.registry.sync import MARKER, RegistrySync
from tensorgate.repository.manager import ModelRepository
from tensorgate.routing import rollout as ro
from tensorgate.routing.manager import RouteManager
from tensorgate.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import build_models  # noqa: E402


class FakeSource:
    """The registry's answers, set by the test; ``down`` makes every call fail."""

    where = "fake://registry"

    def __init__(self) -> None:
        self.models: dict[str, RegisteredModel] = {}
        self.down = False
        self.unusable: set[tuple[str, int]] = set()
        self.downloads: list[tuple[str, int]] = []
        self.names, self.tag = ("m",), None

    def put(self, name: str, versions: dict[int, str], aliases=None, tags=None) -> None:
        """``versions``: version -> stage ("" or "Archived")."""
        infos = {v: VersionInfo(v, stage, "READY", f"runs:/r{v}/model", f"r{v}", "", 0)
                 for v, stage in versions.items()}
        self.models[name] = RegisteredModel(name, dict(aliases or {}), dict(tags or {}), 0,
                                            infos)

    def snapshot(self):
        if self.down:
            raise RegistryUnavailable("connection refused")
        return dict(self.models)

    def download(self, name: str, version: int, into: Path):
        if self.down:
            raise RegistryUnavailable("connection refused")
        if (name, version) in self.unusable:
            into.mkdir()
            raise VersionUnusable("MLmodel has no onnx flavor (flavors: sklearn)")
        self.downloads.append((name, version))
        into.mkdir()
        onnx.save(build_models.versioned_model(name, version), into / "model.onnx")
        return f"fake:/{name}/{version}", "model.onnx"


def _setup(tmp_path, **kwargs):
    repo = ModelRepository(tmp_path, 8, 1.0)
    routes = RouteManager(repo, None)
    source = FakeSource()
    return source, repo, routes, RegistrySync(source, repo, routes, 0.05, **kwargs)


def _targets(routes, name):
    return [(t.model, t.version, t.weight) for t in routes.get_route(name).targets]


def test_versions_are_synced_with_lineage_and_aliases_pin_routes(tmp_path):
    async def scenario():
        source, repo, routes, sync = _setup(tmp_path)
        await repo.load_all(asyncio.get_running_loop())
        source.put("m", {1: "", 2: ""}, aliases={"champion": 1})
        await sync.sync_once()
        assert [m.version for m in repo.versions_of("m")] == [1, 2]
        params = repo.resolve("m", "2").config.parameters
        assert params["mlflow.version"].string_value == "2"
        assert params["mlflow.run_id"].string_value == "r2"
        assert params["mlflow.registered_model"].string_value == "m"
        assert json.loads((tmp_path / "m" / MARKER).read_text())["registered_model"] == "m"
        assert "all" in (tmp_path / "m" / "config.pbtxt").read_text()
        assert _targets(routes, route_name("m", "champion")) == [("m", "1", 100.0)]
        # Nothing new: nothing downloaded or reloaded again.
        served = repo.resolve("m", "1")
        await sync.sync_once()
        assert source.downloads == [("m", 1), ("m", 2)] and repo.resolve("m", "1") is served
        # Moved: a switch, with who moved it in the event.
        source.put("m", {1: "", 2: ""}, aliases={"champion": 2},
                   tags={"tensorgate.alias.champion.moved_by": "bob"})
        await sync.sync_once()
        assert _targets(routes, "m@champion") == [("m", "2", 100.0)]
        event = routes.list_events("m@champion")[-1]
        assert event.kind == "set" and "by bob (registry)" in event.message
        # Archived (no alias on it): removed and unloaded; an aliased one stays.
        source.put("m", {1: "Archived", 2: "Archived"}, aliases={"champion": 2})
        await sync.sync_once()
        assert [m.version for m in repo.versions_of("m")] == [2]
        assert sorted(p.name for p in (tmp_path / "m").iterdir() if p.name.isdigit()) == ["2"]
        assert sync.versions_added == 2 and sync.versions_removed == 1
        await routes.close()
        await repo.unload_all()

    asyncio.run(scenario())


def test_a_moved_alias_canaries_and_a_rolled_back_one_is_not_retried(tmp_path, caplog):
    async def scenario():
        canary = pb.RolloutSpec(stages=[50, 100], hold_secs=0.05, auto_promote=True)
        source, repo, routes, sync = _setup(tmp_path, alias_move="canary", canary=canary)
        await repo.load_all(asyncio.get_running_loop())
        source.put("m", {1: "", 2: "", 3: ""}, aliases={"prod": 1})
        await sync.sync_once()
        source.put("m", {1: "", 2: "", 3: ""}, aliases={"prod": 2})
        await sync.sync_once()
        status = routes.get_route("m@prod").rollout
        assert status.state == ro.RUNNING and status.spec.candidate_version == "2"
        assert "by registry" in routes.list_events("m@prod")[-1].message
        await sync.sync_once()  # under way: left alone
        assert routes.get_route("m@prod").rollout.state == ro.RUNNING
        routes.rollback_rollout("m@prod", "p99 guard (by hand)")
        await sync.sync_once()  # the same version again: not retried
        assert routes.get_route("m@prod").rollout.state == ro.ROLLED_BACK
        assert _targets(routes, "m@prod") == [("m", "1", 100.0)]
        assert "until the alias prod moves again" in caplog.text
        source.put("m", {1: "", 2: "", 3: ""}, aliases={"prod": 3})  # moved on: a new canary
        await sync.sync_once()
        assert routes.get_route("m@prod").rollout.spec.candidate_version == "3"
        for _ in range(100):  # the candidate is called; the stages pass and it promotes
            routes.table.routes["m@prod"].stats[1].requests += 1
            await asyncio.sleep(0.02)
            if routes.get_route("m@prod").rollout.state == ro.PROMOTED:
                break
        assert _targets(routes, "m@prod") == [("m", "3", 100.0)]
        await routes.close()
        await repo.unload_all()

    asyncio.run(scenario())


def test_an_unreachable_registry_backs_off_keeps_serving_and_recovers(tmp_path):
    async def scenario():
        source, repo, routes, sync = _setup(tmp_path)
        await repo.load_all(asyncio.get_running_loop())
        source.put("m", {1: ""})
        await sync.sync_once()
        source.down = True
        sync.start()
        await asyncio.sleep(0.5)
        assert sync.up is False and sync.errors >= 2 and sync.consecutive_errors >= 2
        assert repo.resolve("m", "1") is not None  # still serving
        families = {f.name: f for f in RegistryCollector(sync).collect()}
        assert families["tensorgate_registry_up"].samples[0].value == 0.0
        assert families["tensorgate_registry_errors"].samples[0].value == sync.errors
        source.put("m", {1: "", 2: ""})
        source.down = False
        for _ in range(100):
            await asyncio.sleep(0.05)
            if sync.up:
                break
        await asyncio.sleep(0.1)
        assert sync.up and sync.consecutive_errors == 0
        assert [m.version for m in repo.versions_of("m")] == [1, 2]
        await sync.stop()
        await routes.close()
        await repo.unload_all()

    asyncio.run(scenario())


def test_backoff_doubles_from_one_poll_period_to_eight():
    sync = RegistrySync(FakeSource(), None, None, 2.0)
    delays = []
    for n in range(1, 8):
        sync.consecutive_errors = n
        delays.append(sync.next_delay())
    for got, want in zip(delays, [2, 4, 8, 16, 16, 16, 16]):
        assert want * 0.9 <= got <= want * 1.1
    sync.consecutive_errors = 0
    assert sync.next_delay() == 2.0


def test_foreign_directories_and_unusable_versions_are_left_alone(tmp_path, caplog):
    async def scenario():
        source, repo, routes, sync = _setup(tmp_path)
        build_models._write_model(tmp_path, "mine", build_models.versioned_model("mine", 1))
        await repo.load_all(asyncio.get_running_loop())
        source.put("mine", {1: "", 2: ""})
        source.put("m", {1: "", 2: ""})
        source.unusable.add(("m", 2))
        await sync.sync_once()
        await sync.sync_once()
        assert not (tmp_path / "mine" / "2").exists() and not (tmp_path / "mine" / MARKER).exists()
        assert "did not make" in caplog.text
        assert [m.version for m in repo.versions_of("m")] == [1]
        assert source.downloads == [("m", 1)] and sync.version_failures == 1
        assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]
        await routes.close()
        await repo.unload_all()

    asyncio.run(scenario())


def test_tracking_uris_and_settings():
    assert tracking_uri("mlflow://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert tracking_uri("mlflow+https://reg.example/api") == "https://reg.example/api"
    assert tracking_uri("mlflow", {"MLFLOW_TRACKING_URI": "http://x:1"}) == "http://x:1"
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI"):
        tracking_uri("mlflow", {})
    assert shown("https://user:secret@reg.example:8443/p") == "https://reg.example:8443/p"
    with pytest.raises(ValueError, match="needs model_repository"):
        Settings(model_registry="mlflow://h:1", registry_models=("m",))
    with pytest.raises(ValueError, match="registry_models .names. or registry_tag"):
        Settings(model_registry="mlflow://h:1", model_repository=Path("/"))
    with pytest.raises(ValueError, match="must be mlflow://"):
        Settings(model_registry="http://h:1", model_repository=Path("/"), registry_tag="t")
    with pytest.raises(ValueError, match="registry_canary_stages"):
        Settings(registry_canary_stages="50,20")
    with pytest.raises(ValueError, match="need model_registry"):
        Settings(registry_models=("m",))
