"""The registry sync: a background task that makes the repository follow a registry.

Every ``poll_secs`` it reads the selected registered models (on a worker thread: the
event loop never waits for the registry), then for each model:

- versions that are READY and not archived become repository versions: the artifacts
  are downloaded beside the model's directory under a hidden name, their ONNX model
  made ``model.onnx``, their lineage written (``lineage.json``: registered model,
  version, run id, source), and the directory renamed into place as ``<version>/``;
  a version's ``tests/`` come along, so its own tests gate it at load;
- the model's ``config.pbtxt`` is from the artifacts of the newest version with one, with
  ``version_policy: all`` unless it names one (the registry says which versions exist);
  a model without one gets just that policy (the rest is completed from the graph);
- versions deleted or archived in the registry are removed from the directory, unless
  an alias still points at them;
- the model is (re)loaded when anything changed: new versions are warmed up and
  tested before they take traffic, removed ones drain first, a failing one never
  serves (RepositoryIndex and the log say why);
- each alias is a route ``<model>@<alias>`` pinned to the alias' version; when the
  alias moves, the route moves (a blue-green switch, or a canary rollout), and the
  routing event says who moved it.

Only directories the sync made (a ``registry.json`` marker) are touched. A registry
that cannot be reached changes nothing: what is loaded keeps serving, the failure is
counted on /metrics and logged, and polls back off (from one poll period doubling to
eight, at most 300 s) until it answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

from google.protobuf import text_format

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.errors import ModelLoadError, ModelLoadFailed, NotFound, TensorGateError
from tensorgate.fileio import atomic_write_text
from tensorgate.registry.mlflow_source import (
    ARCHIVED,
    READY,
    MlflowSource,
    RegisteredModel,
    RegistryUnavailable,
    VersionInfo,
    VersionUnusable,
)
from tensorgate.repository import lineage
from tensorgate.repository.layout import versions_on_disk
from tensorgate.repository.paths import name_problem
from tensorgate.routing import rollout as ro

log = logging.getLogger("tensorgate.registry")

MARKER = "registry.json"
MOVED_BY_TAG = "tensorgate.alias.{alias}.moved_by"
BACKOFF_MAX_S = 300.0
ALIAS_MOVES = ("switch", "canary")


def route_name(model: str, alias: str) -> str:
    """The route an alias becomes (MLflow's own ``models:/<model>@<alias>`` spelling)."""
    return f"{model}@{alias}"


class RegistrySync:
    def __init__(self, source: MlflowSource, repository, routes, poll_secs: float,
                 alias_move: str = "switch", canary: pb.RolloutSpec | None = None) -> None:
        if alias_move not in ALIAS_MOVES:
            raise ValueError(f"alias_move must be one of {ALIAS_MOVES}, got {alias_move!r}")
        self.source = source
        self.repository = repository
        self.routes = routes
        self.poll_secs = poll_secs
        self.alias_move = alias_move
        self.canary = canary or pb.RolloutSpec(auto_promote=True)
        self._task: asyncio.Task | None = None
        self._said: set = set()  # messages logged once, until what they say changes
        self._unusable: dict[tuple[str, int], str] = {}
        # What /metrics reports (read from the metrics thread: plain numbers).
        self.up: bool | None = None  # None: no poll finished yet
        self.polls = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.last_success_unix = 0.0
        self.last_error = ""
        self.versions_added = 0
        self.versions_removed = 0
        self.version_failures = 0
        self.alias_moves = 0

    # -- lifecycle ----------------------------------------------------------------------

    def collector(self):
        """Its /metrics families (a prometheus_client collector)."""
        from tensorgate.registry.metrics import RegistryCollector

        return RegistryCollector(self)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="registry-sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        log.info("registry sync: %s every %g s (%s)", self.source.where, self.poll_secs,
                 self._selection())
        while True:
            try:
                await self.sync_once()
            except RegistryUnavailable as exc:
                self._failed(str(exc))
            except Exception as exc:  # a bug must not end the sync; it is logged
                log.exception("registry sync failed")
                self._failed(f"internal error: {exc!r}")
            else:
                self._succeeded()
            await asyncio.sleep(self.next_delay())

    def _selection(self) -> str:
        parts = []
        if self.source.names:
            parts.append("models " + ", ".join(self.source.names))
        if self.source.tag is not None:
            key, value = self.source.tag
            parts.append(f"models tagged {key}" + (f"={value}" if value is not None else ""))
        return "; ".join(parts)

    def next_delay(self) -> float:
        """The poll period, or while the registry fails, a backoff that doubles from one
        period to eight (at most 300 s, never less than one period), with 10% jitter."""
        if not self.consecutive_errors:
            return self.poll_secs
        cap = max(min(8 * self.poll_secs, BACKOFF_MAX_S), self.poll_secs)
        delay = min(self.poll_secs * 2 ** min(self.consecutive_errors - 1, 30), cap)
        return delay * random.uniform(0.9, 1.1)

    def _failed(self, reason: str) -> None:
        self.polls += 1
        self.errors += 1
        self.consecutive_errors += 1
        self.up = False
        self.last_error = reason
        n = self.consecutive_errors
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th... failure in a row: enough to see it
            log.warning("registry %s unreachable (%d failed poll(s) in a row): %s; what is "
                        "loaded keeps serving; retrying in about %.0f s", self.source.where,
                        n, reason, self.next_delay())

    def _succeeded(self) -> None:
        if self.consecutive_errors:
            log.info("registry %s reachable again after %d failed poll(s)",
                     self.source.where, self.consecutive_errors)
        self.polls += 1
        self.consecutive_errors = 0
        self.up = True
        self.last_success_unix = time.time()

    def _once(self, key, level: int, message: str, *args) -> None:
        if key not in self._said:
            self._said.add(key)
            log.log(level, message, *args)

    # -- one poll -----------------------------------------------------------------------

    async def sync_once(self) -> None:
        snapshot = await asyncio.to_thread(self.source.snapshot)
        for model in snapshot.values():
            await self._sync_model(model)

    async def _sync_model(self, rm: RegisteredModel) -> None:
        name = rm.name
        problem = name_problem(name)
        if problem is not None:
            self._once(("name", name), logging.ERROR, "registry: registered model %r cannot "
                       "be served: %s", name, problem)
            return
        model_dir = self.repository.root / name
        if model_dir.exists() and not (model_dir / MARKER).exists():
            self._once(("foreign", name), logging.ERROR,
                       "registry: the repository already has a model directory %s/ that the "
                       "registry sync did not make; registered model '%s' is not synced "
                       "(rename one of them)", name, name)
            return
        pinned = set(rm.aliases.values())
        wanted = {
            v: info for v, info in rm.versions.items()
            if info.status == READY and (info.stage != ARCHIVED or v in pinned)
            and (name, v) not in self._unusable
        }
        if not wanted and not model_dir.exists():
            return  # registered, no version to serve yet: nothing to make
        changed = await asyncio.to_thread(self._sync_files, rm, model_dir, wanted)
        if changed or not self.repository.known(name):
            try:
                await self.repository.load(name)
            except (ModelLoadFailed, TensorGateError) as exc:
                # The repository logged which version failed and why; RepositoryIndex
                # has it. The versions that load serve.
                log.warning("registry: %s: %s", name, getattr(exc, "message", exc))
        self._aliases(rm)

    def _sync_files(self, rm: RegisteredModel, model_dir: Path,
                    wanted: dict[int, VersionInfo]) -> bool:
        """Bring the model's directory in line with the registry (blocking: a worker
        thread). True when a version or the config changed."""
        name = rm.name
        if not model_dir.exists():
            model_dir.mkdir(parents=True)
            _write_atomic(model_dir / MARKER, json.dumps(
                {"registry": "mlflow", "uri": self.source.where, "registered_model": name},
                indent=2) + "\n")
        for stale in model_dir.glob(".staging-*"):  # a download cut short
            shutil.rmtree(stale, ignore_errors=True)
        on_disk = versions_on_disk(model_dir)
        managed = {v for v in on_disk if _synced_version(model_dir, v)}
        changed = False
        for v in sorted(wanted):
            if v in on_disk:
                if v not in managed:
                    self._once(("conflict", name, v), logging.ERROR,
                               "registry: %s/%d/ exists and was not synced from the "
                               "registry (e.g. tensorgate optimize wrote it): registered "
                               "version %d is not synced", name, v, v)
                continue
            try:
                self._fetch(rm, wanted[v], model_dir)
            except VersionUnusable as exc:
                self._unusable[(name, v)] = str(exc)
                self.version_failures += 1
                log.error("registry: %s version %d cannot be served: %s", name, v, exc)
                continue
            changed = True
            self.versions_added += 1
            on_disk.append(v)
        for v in sorted(managed - set(wanted)):
            gone = rm.versions.get(v)
            why = "archived" if gone is not None and gone.stage == ARCHIVED else (
                "deleted" if gone is None else f"status {gone.status}")
            _remove_version(model_dir, v)
            self.versions_removed += 1
            changed = True
            log.info("registry: %s version %d %s in the registry: removed from the "
                     "repository (it drains before it is released)", name, v, why)
        return self._sync_config(name, model_dir, wanted) or changed

    def _fetch(self, rm: RegisteredModel, info: VersionInfo, model_dir: Path) -> None:
        staging = model_dir / f".staging-{info.version}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            uri, model_file = self.source.download(rm.name, info.version, staging)
            lineage.write(staging, {
                "mlflow.registered_model": rm.name,
                "mlflow.version": str(info.version),
                "mlflow.run_id": info.run_id,
                "mlflow.source": info.source,
                "mlflow.artifact_uri": uri,
                "mlflow.registry": self.source.where,
            })
            os.replace(staging, model_dir / str(info.version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("registry: fetched %s version %d (run %s, %s; model file %s)", rm.name,
                 info.version, info.run_id or "none", info.source, model_file)

    def _sync_config(self, name: str, model_dir: Path, wanted) -> bool:
        """config.pbtxt from the artifacts of the newest wanted version that has one (or
        just a version policy); True when it was (re)written."""
        current_path = model_dir / "config.pbtxt"
        with_config = [v for v in versions_on_disk(model_dir)
                       if v in wanted and (model_dir / str(v) / "config.pbtxt").exists()]
        config = mc.ModelConfig()
        origin = "no config.pbtxt in the artifacts"
        if with_config:
            newest = max(with_config)
            try:
                text_format.Parse(
                    (model_dir / str(newest) / "config.pbtxt").read_text(encoding="utf-8"),
                    config)
                origin = f"version {newest}'s artifacts"
            except (OSError, text_format.ParseError) as exc:
                self._once(("config", name, newest), logging.ERROR,
                           "registry: %s version %d: its config.pbtxt is not used: %s",
                           name, newest, exc)
                if current_path.exists():
                    return False
                config = mc.ModelConfig()
        elif current_path.exists():
            return False  # keep the one there (an earlier version's, or the operator's)
        config.name = name
        if not config.HasField("version_policy"):
            config.version_policy.all.SetInParent()
        text = text_format.MessageToString(config)
        try:
            if current_path.read_text(encoding="utf-8") == text:
                return False
        except FileNotFoundError:
            pass
        _write_atomic(current_path, text)
        log.info("registry: %s/config.pbtxt written from %s", name, origin)
        return True

    # -- aliases -> routes ----------------------------------------------------------------

    def _who(self, rm: RegisteredModel, alias: str, version: int) -> str:
        tag = rm.tags.get(MOVED_BY_TAG.format(alias=alias))
        if tag:
            return f"{tag} (registry)"
        info = rm.versions.get(version)
        if info is not None and info.user_id:
            return f"registry; version {version} registered by {info.user_id}"
        return "registry; it records no user for the alias"

    def _aliases(self, rm: RegisteredModel) -> None:
        name = rm.name
        for alias, version in sorted(rm.aliases.items()):
            route = route_name(name, alias)
            if name_problem(route, "route") is not None:
                continue
            target = (name, str(version))
            who = self._who(rm, alias, version)
            try:
                self.repository.resolve(name, str(version))
            except TensorGateError as exc:
                self._once(("not serving", route, version), logging.WARNING,
                           "registry: alias %s of %s points at version %d, which is not "
                           "serving (%s): route %s stays as it is", alias, name, version,
                           exc.message, route)
                continue
            try:
                self._move(route, target, alias, who)
            except TensorGateError as exc:
                self._once(("refused", route, version, exc.message), logging.ERROR,
                           "registry: alias %s of %s -> version %d: route %s refused the "
                           "change: %s", alias, name, version, route, exc.message)

    def _move(self, route: str, target: tuple[str, str], alias: str, who: str) -> None:
        model, version = target
        try:
            spec = self.routes.get_route(route)
        except NotFound:
            new = pb.Route(name=route)
            new.targets.add(model=model, version=version, weight=100.0)
            self.routes.set_route(new, by=who)
            log.info("registry: alias %s of %s -> route %s pinned to version %s", alias,
                     model, route, version)
            return
        r = spec.rollout
        if r.state in ro.ACTIVE:
            if (r.spec.candidate_model, r.spec.candidate_version) == target:
                return  # the rollout to it is under way
            if (r.stable_model, r.stable_version) == target:
                self.routes.rollback_rollout(
                    route, f"alias {alias} moved back to version {version} in the registry",
                    by=who)
                self.alias_moves += 1
                return
            self._once(("busy", route, version), logging.WARNING,
                       "registry: alias %s of %s moved to version %s while route %s rolls "
                       "out version %s: it follows once that rollout ends", alias, model,
                       version, route, r.spec.candidate_version)
            return
        live = [(t.model, t.version) for t in spec.targets if t.weight > 0]
        if live == [target]:
            return
        if r.state == ro.ROLLED_BACK and \
                (r.spec.candidate_model, r.spec.candidate_version) == target:
            self._once(("rolled back", route, version), logging.WARNING,
                       "registry: the canary of %s:%s on route %s was rolled back (%s); the "
                       "route stays on %s:%s until the alias %s moves again", model, version,
                       route, r.reason, r.stable_model, r.stable_version, alias)
            return
        if self.alias_move == "canary":
            rollout = pb.RolloutSpec()
            rollout.CopyFrom(self.canary)
            rollout.candidate_model, rollout.candidate_version = target
            self.routes.start_rollout(route, rollout, by=who)
            how = "canary rollout started"
        else:
            new = pb.Route()
            new.CopyFrom(spec)
            del new.targets[:]
            new.targets.add(model=model, version=version, weight=100.0)
            self.routes.set_route(new, by=who)
            how = "switched"
        self.alias_moves += 1
        log.info("registry: alias %s of %s moved to version %s (by %s): route %s %s", alias,
                 model, version, who, route, how)


def _synced_version(model_dir: Path, version: int) -> bool:
    """Whether ``<version>/`` came from the registry (its lineage says so)."""
    try:
        entries = lineage.read(model_dir / str(version) / lineage.LINEAGE_FILE)
    except ModelLoadError:
        return False
    return entries.get("mlflow.version") == str(version)


def _remove_version(model_dir: Path, version: int) -> None:
    """Take ``<version>/`` out of the layout at once (a rename), then delete it; the
    loaded sessions hold their model in memory, so serving is not affected."""
    gone = model_dir / f".removed-{version}-{time.monotonic_ns()}"
    os.replace(model_dir / str(version), gone)
    shutil.rmtree(gone, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text, sync_dir=False)
