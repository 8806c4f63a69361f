"""Routes on the control side: validate, apply atomically, persist, drive rollouts.

Every change builds a whole new ``RouteTable`` (table.py) and swaps it in one
assignment, after validating the change as a whole: a change applies entirely or not
at all. The route specs (``control_pb2.Route``, rollout status included) are the
persisted state; the compiled table is derived from them.
"""

from __future__ import annotations

import collections
import logging
import time
from pathlib import Path

from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TensorGateError,
    Unavailable,
)
from tensorgate.fileio import remove_stale_temps
from tensorgate.repository.paths import check_name
from tensorgate.routing import layout
from tensorgate.routing import rollout as ro
from tensorgate.routing import store
from tensorgate.routing.shadow import ShadowRunner
from tensorgate.routing.table import (
    CompiledRoute,
    RouteTable,
    ShadowStats,
    ShadowTarget,
    VariantStats,
    make_target,
    target_label,
)

log = logging.getLogger("tensorgate.routing")

MAX_EVENTS = 1000
WEIGHT_TOLERANCE = 1e-6


def _by(who: str) -> str:
    return f" (by {who})" if who else ""


class RouteManager:
    def __init__(self, repository, state_file: Path | None) -> None:
        self.repository = repository
        self.state_file = state_file
        self.table = RouteTable({})
        self.shadows = ShadowRunner(repository)
        self._specs: dict[str, pb.Route] = {}
        self._variant_stats: dict[tuple[str, str], VariantStats] = {}
        self._shadow_stats: dict[tuple[str, str], ShadowStats] = {}
        self._rollouts: dict[str, ro.Rollout] = {}
        self.events: collections.deque = collections.deque(maxlen=MAX_EVENTS)

    # -- start and stop ------------------------------------------------------------------

    def restore(self) -> int:
        """Load the persisted routes (after the models loaded) and resume rollouts;
        returns how many routes there are. Targets not ready now are kept (requests get
        UNAVAILABLE until they are), with a warning."""
        if self.state_file is None:
            return 0
        # Writes are atomic, so a kill mid-write leaves routes.json whole plus a temp
        # file that is never read; without this they pile up, one per such crash.
        stale = remove_stale_temps(self.state_file)
        if stale:
            log.info("removed %d temp file(s) left beside %s by an interrupted write",
                     stale, self.state_file)
        for route in store.load(self.state_file):
            for t in list(route.targets) + ([route.shadow] if route.HasField("shadow") else []):
                try:
                    self.repository.resolve(t.model, t.version)
                except TensorGateError as exc:
                    log.warning("route %s: target %s:%s is not serving: %s",
                                route.name, t.model, t.version or "default", exc.message)
            self._specs[route.name] = route
        self._publish(persist=False)
        for name, route in self._specs.items():
            if route.HasField("rollout") and route.rollout.state in ro.ACTIVE:
                self._start_driver(name, route.rollout)
                self._event(name, "resume", f"rollout resumed after restart at stage "
                            f"{route.rollout.stage} ({route.rollout.state})")
        return len(self._specs)

    async def close(self) -> None:
        for rollout in self._rollouts.values():
            rollout.stop()
        await self.shadows.close()

    # -- reads ---------------------------------------------------------------------------

    def list_routes(self) -> list[pb.Route]:
        return [self._specs[n] for n in sorted(self._specs)]

    def get_route(self, name: str) -> pb.Route:
        route = self._specs.get(name)
        if route is None:
            raise NotFound(f"unknown route '{name}'")
        return route

    def primary(self, name: str):
        """(model, version) of a route's heaviest target (for ModelReady, ModelMetadata
        and ModelConfig on a route name), or None when ``name`` is no route."""
        route = self.table.routes.get(name)
        if route is None:
            return None
        target = max(route.targets, key=lambda t: t.weight)
        return target.model, target.version

    def list_events(self, route: str = "", limit: int = 100) -> list[pb.RoutingEvent]:
        events = [e for e in self.events if not route or e.route == route]
        return events[-(limit or 100):]

    # -- changes -------------------------------------------------------------------------

    def set_route(self, route: pb.Route, normalize: bool = False, by: str = ""
                  ) -> tuple[pb.Route, list[str]]:
        """Create or replace a route; ``by``: who asked, when not a control-plane caller
        (e.g. the registry sync), recorded in the event."""
        spec = pb.Route()
        spec.CopyFrom(route)
        spec.ClearField("rollout")
        spec.ClearField("key_ranges")
        current = self._specs.get(spec.name)
        if current is not None and current.rollout.state in ro.ACTIVE:
            raise FailedPrecondition(
                f"route '{spec.name}' has a rollout {current.rollout.state}: promote or roll "
                "it back before changing the route"
            )
        notes = self._validate(spec, normalize)
        if current is not None:
            if current.HasField("rollout"):
                spec.rollout.CopyFrom(current.rollout)  # keep the finished rollout's record
            spec.key_ranges.extend(current.key_ranges)  # _publish moves only what must move
        self._specs[spec.name] = spec
        self._publish()
        targets = ", ".join(
            f"{t.model}:{t.version or 'default'}={t.weight:g}" for t in spec.targets
        )
        self._event(spec.name, "set", f"targets {targets}" + (" sticky" if spec.sticky else "")
                    + (f"; shadow {spec.shadow.model} {spec.shadow.fraction:g}"
                       if spec.HasField("shadow") else "") + "".join(f"; {n}" for n in notes)
                    + _by(by))
        return spec, notes

    def delete_route(self, name: str) -> None:
        self.get_route(name)
        rollout = self._rollouts.pop(name, None)
        if rollout is not None:
            rollout.stop()
        del self._specs[name]
        self._publish()
        self._event(name, "delete", "route deleted")

    def start_rollout(self, name: str, spec: pb.RolloutSpec, by: str = "") -> pb.Route:
        route = self.get_route(name)
        if route.rollout.state in ro.ACTIVE:
            raise FailedPrecondition(f"route '{name}' already has a rollout {route.rollout.state}")
        live = [t for t in route.targets if t.weight > 0]
        if len(live) != 1:
            raise FailedPrecondition(
                f"route '{name}': a rollout starts from one serving target (the stable one); "
                f"it has {len(live)}"
            )
        stable = live[0]
        stages = list(spec.stages) or list(ro.DEFAULT_STAGES)
        if any(not 0 < s <= 100 for s in stages) or stages != sorted(stages):
            raise InvalidArgument(f"rollout stages must ascend within (0, 100], got {stages}")
        if spec.hold_secs < 0:
            raise InvalidArgument(f"hold_secs must be >= 0, got {spec.hold_secs:g}")
        g = spec.guards
        for field in ("max_error_rate", "max_disagreement"):
            if not 0 <= getattr(g, field) <= 1:
                raise InvalidArgument(f"guards.{field} must be in 0..1")
        if g.max_p99_ratio < 0 or g.max_p99_ms < 0:
            raise InvalidArgument("guards.max_p99_ratio and max_p99_ms must be >= 0")
        if (spec.candidate_model, spec.candidate_version) == (stable.model, stable.version):
            raise InvalidArgument("the candidate is the stable target")
        candidate = self._check_target(name, spec.candidate_model, spec.candidate_version,
                                       "candidate")
        self._check_compatible(name, [self._check_target(name, stable.model, stable.version,
                                                         "stable target"), candidate])
        status = pb.RolloutStatus(state=ro.RUNNING, stage=0, stable_model=stable.model,
                                  stable_version=stable.version, updated_unix=time.time())
        status.spec.CopyFrom(spec)
        del status.spec.stages[:]
        status.spec.stages.extend(stages)
        status.percent = stages[0]
        route.rollout.CopyFrom(status)
        self._set_rollout_targets(route, stages[0])
        self._publish()
        self._event(name, "rollout_start",
                    f"canary to {spec.candidate_model}:{spec.candidate_version or 'default'}, "
                    f"stages {stages}, hold {spec.hold_secs or ro.DEFAULT_HOLD_SECS:g} s"
                    + _by(by))
        self._start_driver(name, route.rollout)
        return route

    def pause_rollout(self, name: str, resume: bool) -> pb.Route:
        route = self.get_route(name)
        want_from = ro.PAUSED if resume else ro.RUNNING
        if route.rollout.state != want_from:
            raise FailedPrecondition(
                f"route '{name}': rollout is {route.rollout.state or 'not started'}, "
                f"cannot {'resume' if resume else 'pause'}"
            )
        route.rollout.state = ro.RUNNING if resume else ro.PAUSED
        route.rollout.updated_unix = time.time()
        self._persist()
        self._event(name, "resume" if resume else "pause",
                    f"rollout {'resumed' if resume else 'paused'} at {route.rollout.percent:g}%")
        return route

    def promote_rollout(self, name: str) -> pb.Route:
        route = self.get_route(name)
        if route.rollout.state not in ro.ACTIVE:
            raise FailedPrecondition(f"route '{name}' has no rollout to promote")
        self.promote_now(name, "promoted on request")
        return self._specs[name]

    def rollback_rollout(self, name: str, reason: str, by: str = "") -> pb.Route:
        route = self.get_route(name)
        if route.rollout.state not in ro.ACTIVE:
            raise FailedPrecondition(f"route '{name}' has no rollout to roll back")
        self.rollback_now(name, (reason or "rolled back on request") + _by(by))
        return self._specs[name]

    # -- called by the rollout driver ------------------------------------------------------

    def apply_stage(self, name: str, stage: int) -> None:
        route = self._specs[name]
        stages = route.rollout.spec.stages
        route.rollout.stage = stage
        route.rollout.percent = stages[stage]
        route.rollout.updated_unix = time.time()
        self._set_rollout_targets(route, stages[stage])
        self._publish()
        self._event(name, "stage", f"stage {stage + 1}/{len(stages)}: {stages[stage]:g}% to "
                    f"{route.rollout.spec.candidate_model}")

    def await_promotion(self, name: str) -> None:
        route = self._specs[name]
        route.rollout.state = ro.AWAITING
        self._persist()
        self._event(name, "await_promotion", "last stage held; waiting for PromoteRollout")

    def promote_now(self, name: str, why: str) -> None:
        route = self._specs[name]
        r = route.rollout
        del route.targets[:]
        route.targets.add(model=r.spec.candidate_model, version=r.spec.candidate_version,
                          weight=100.0)
        r.state, r.reason, r.percent, r.updated_unix = ro.PROMOTED, why, 100.0, time.time()
        self._end_rollout(name)
        self._event(name, "promote", f"{r.spec.candidate_model}:"
                    f"{r.spec.candidate_version or 'default'} now takes all traffic ({why})")

    def rollback_now(self, name: str, why: str) -> None:
        """Back to stable at once (synchronous: one table swap)."""
        route = self._specs.get(name)
        if route is None or route.rollout.state not in ro.ACTIVE:
            return
        r = route.rollout
        del route.targets[:]
        route.targets.add(model=r.stable_model, version=r.stable_version, weight=100.0)
        r.state, r.reason, r.percent, r.updated_unix = ro.ROLLED_BACK, why, 0.0, time.time()
        self._end_rollout(name)
        log.warning("route %s rolled back to %s:%s: %s", name, r.stable_model,
                    r.stable_version or "default", why)
        self._event(name, "rollback", why)

    # -- internals -----------------------------------------------------------------------

    def _end_rollout(self, name: str) -> None:
        rollout = self._rollouts.pop(name, None)
        self._publish()
        if rollout is not None:
            rollout.stop()

    def _start_driver(self, name: str, status: pb.RolloutStatus) -> None:
        rollout = ro.Rollout(self, name, status)
        self._rollouts[name] = rollout
        self._publish(persist=False)  # attach the Rollout to the compiled route
        rollout.open_window()  # before any request reaches the candidate through it
        rollout.start()

    @staticmethod
    def _set_rollout_targets(route: pb.Route, percent: float) -> None:
        r = route.rollout
        del route.targets[:]
        route.targets.add(model=r.stable_model, version=r.stable_version, weight=100.0 - percent)
        route.targets.add(model=r.spec.candidate_model, version=r.spec.candidate_version,
                          weight=percent)

    def _check_target(self, route: str, model: str, version: str, what: str):
        if not model:
            raise InvalidArgument(f"route '{route}': a {what} names no model")
        if model in self._specs:
            raise InvalidArgument(
                f"route '{route}': {what} '{model}' is a route; targets are models "
                "(routes do not nest, so there are no cycles)"
            )
        if not self.repository.known(model):
            raise NotFound(f"route '{route}': {what} names unknown model '{model}'")
        try:
            return self.repository.resolve(model, version)
        except NotFound as exc:
            raise NotFound(f"route '{route}': {what}: {exc.message}") from None
        except Unavailable as exc:
            raise InvalidArgument(f"route '{route}': {what} is not ready: {exc.message}") from None

    @staticmethod
    def _check_compatible(route: str, models) -> None:
        first = models[0]
        want = {n: s.dtype.wire for n, s in first.inputs.items()}
        for m in models[1:]:
            got = {n: s.dtype.wire for n, s in m.inputs.items()}
            if got != want:
                raise InvalidArgument(
                    f"route '{route}': {m.label} takes inputs {got}, {first.label} takes "
                    f"{want}; a route's targets must take the same inputs"
                )

    def _validate(self, spec: pb.Route, normalize: bool) -> list[str]:
        name = spec.name
        notes: list[str] = []
        check_name(name, "route")  # a route is addressed like a model
        if self.repository.known(name) or (self.repository.root / name).is_dir():
            raise InvalidArgument(f"route name '{name}' is a model's name; routes may not "
                                  "shadow models")
        if not spec.targets:
            raise InvalidArgument(f"route '{name}' has no targets")
        seen = set()
        models = []
        for t in spec.targets:
            key = (t.model, t.version)
            if key in seen:
                raise InvalidArgument(f"route '{name}': target {t.model}:{t.version or 'default'}"
                                      " is listed twice")
            seen.add(key)
            if not t.weight >= 0:
                raise InvalidArgument(f"route '{name}': weight of {t.model} is {t.weight:g}; "
                                      "weights are >= 0")
            models.append(self._check_target(name, t.model, t.version, "target"))
        total = sum(t.weight for t in spec.targets)
        if total <= 0:
            raise InvalidArgument(f"route '{name}': weights add up to 0")
        if abs(total - 100.0) > WEIGHT_TOLERANCE:
            if not normalize:
                raise InvalidArgument(
                    f"route '{name}': weights add up to {total:g}, not 100 "
                    "(set normalize to scale them)"
                )
            for t in spec.targets:
                t.weight = t.weight * 100.0 / total
            notes.append(f"weights normalised from a total of {total:g} to 100")
        if spec.HasField("shadow"):
            s = spec.shadow
            if not 0 <= s.fraction <= 1:
                raise InvalidArgument(f"route '{name}': shadow fraction {s.fraction:g} is not "
                                      "in 0..1")
            if s.atol < 0:
                raise InvalidArgument(f"route '{name}': shadow atol must be >= 0")
            models.append(self._check_target(name, s.model, s.version, "shadow"))
        self._check_compatible(name, models)
        return notes

    def _compile(self, spec: pb.Route, key_ranges: layout.Ranges) -> CompiledRoute:
        targets = [make_target(t.model, t.version, t.weight) for t in spec.targets]
        stats = []
        for t in targets:
            key = (spec.name, t.label)
            s = self._variant_stats.get(key)
            if s is None:
                s = self._variant_stats[key] = VariantStats()
            stats.append(s)
        shadow = None
        if spec.HasField("shadow") and spec.shadow.fraction > 0:
            s = spec.shadow
            key = (spec.name, target_label(s.model, s.version))
            sstats = self._shadow_stats.get(key)
            if sstats is None:
                sstats = self._shadow_stats[key] = ShadowStats()
            shadow = ShadowTarget(s.model, s.version, s.fraction, s.atol, sstats)
        rollout = self._rollouts.get(spec.name)
        active = rollout is not None and spec.rollout.state in ro.ACTIVE and len(targets) == 2
        return CompiledRoute(spec.name, targets, spec.sticky, stats, shadow,
                             rollout if active else None, 1 if active else -1, key_ranges)

    @staticmethod
    def _relayout(spec: pb.Route) -> layout.Ranges:
        """Fit the route's sticky key ranges to its weights, moving the least key space
        (layout.py), and return them. Kept for every route, so one made sticky later
        starts from a layout that has followed its weights all along."""
        ranges = [(r.start, r.target) for r in spec.key_ranges]
        weights = [(target_label(t.model, t.version), t.weight) for t in spec.targets]
        fitted = layout.rebalance(ranges, weights)
        if fitted is not ranges:
            del spec.key_ranges[:]
            for start, label in fitted:
                spec.key_ranges.add(start=start, target=label)
        return fitted

    def _publish(self, persist: bool = True) -> None:
        self.table = RouteTable({
            name: self._compile(spec, self._relayout(spec)) for name, spec in self._specs.items()
        })
        if persist:
            self._persist()

    def _persist(self) -> None:
        if self.state_file is None:
            return
        try:
            store.save(self.state_file, self.list_routes())
        except OSError as exc:
            log.error("cannot save routes to %s: %s", self.state_file, exc)

    def _event(self, route: str, kind: str, message: str) -> None:
        self.events.append(pb.RoutingEvent(time_unix=time.time(), route=route, kind=kind,
                                           message=message))
        log.info("route %s %s: %s", route, kind, message,
                 extra={"event": "route", "action": kind, "route": route})

    # -- metrics -------------------------------------------------------------------------

    def variant_stats(self):
        """((route, variant), VariantStats) for every variant ever served (metrics)."""
        return list(self._variant_stats.items())

    def shadow_stats(self):
        return list(self._shadow_stats.items())
