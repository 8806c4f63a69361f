"""Canary rollouts: stages driven by an asyncio task, guards, automatic rollback.

A rollout moves a route from its stable target to a candidate in stages (percent of
traffic to the candidate, e.g. 5 -> 25 -> 50 -> 100), holding each for ``hold_secs``.
Guards compare the candidate with the stable target over the current stage's window
(counter deltas of the route's per-variant stats, same Buckets as stats.py):

- error rate: candidate's minus stable's above ``max_error_rate`` (judged once the
  candidate has ``min_requests`` in the window). Also checked synchronously on every
  candidate failure, so callers see at most ``min_requests`` candidate errors (plus
  requests already in flight) before the route is back on stable;
- p99 latency: above ``max_p99_ratio`` x stable's, or above ``max_p99_ms``;
- shadow disagreement (when the route shadows the candidate): above ``max_disagreement``;
- drift (``max_drift``, a PSI; versions with a drift profile, observability/drift): the
  candidate's drift score against its own profile in its last drift window, or the PSI
  of its output features against the stable target's over both last windows (when
  both are monitored), judged on windows that closed in the current stage. A stage then
  also waits for one such candidate window before it advances.

A breach rolls back at once and records why (a routing event). A stage advances only
when it was held ``hold_secs`` and its candidate saw ``min_requests`` requests (the
status says which it still waits for). The end is automatic promotion or
AWAITING_PROMOTION (guards keep running) as configured.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tensorgate.errors import TensorGateError
from tensorgate.observability.drift import prediction_drift
from tensorgate.observability.stats import LATENCY_BOUNDS_NS

log = logging.getLogger("tensorgate.routing")

RUNNING, PAUSED, AWAITING, PROMOTED, ROLLED_BACK = (
    "RUNNING", "PAUSED", "AWAITING_PROMOTION", "PROMOTED", "ROLLED_BACK",
)
ACTIVE = (RUNNING, PAUSED, AWAITING)
DEFAULT_STAGES = (5.0, 25.0, 50.0, 100.0)
DEFAULT_HOLD_SECS = 60.0
DEFAULT_MAX_ERROR_RATE = 0.05
DEFAULT_MIN_REQUESTS = 20
TICK_S = 0.1


def p99_ns(counts: list[int]) -> float | None:
    """The 99th percentile's bucket upper bound from (non-cumulative) bucket counts."""
    n = sum(counts)
    if not n:
        return None
    want = 0.99 * n
    running = 0
    for i, c in enumerate(counts):
        running += c
        if running >= want:
            return float(LATENCY_BOUNDS_NS[i]) if i < len(LATENCY_BOUNDS_NS) else float("inf")
    return float("inf")


class Window:
    """Counter snapshot of one variant at a window's start."""

    __slots__ = ("requests", "failures", "counts")

    def __init__(self, stats) -> None:
        self.requests = stats.requests
        self.failures = stats.failures
        self.counts = list(stats.latency.counts)

    def delta(self, stats) -> tuple[int, int, list[int]]:
        return (
            stats.requests - self.requests,
            stats.failures - self.failures,
            [a - b for a, b in zip(stats.latency.counts, self.counts)],
        )


class Rollout:
    """Drives one route's rollout; the manager owns the route and applies changes."""

    def __init__(self, manager, route: str, status) -> None:
        self.manager = manager
        self.route = route
        self.status = status  # control_pb2.RolloutStatus, persisted with the route
        spec = status.spec
        self.stages = tuple(spec.stages) or DEFAULT_STAGES
        self.hold = spec.hold_secs or DEFAULT_HOLD_SECS
        g = spec.guards
        self.max_error_rate = g.max_error_rate or DEFAULT_MAX_ERROR_RATE
        self.min_requests = g.min_requests or DEFAULT_MIN_REQUESTS
        self.max_p99_ratio = g.max_p99_ratio
        self.max_p99_ms = g.max_p99_ms
        self.max_disagreement = g.max_disagreement
        self.max_drift = g.max_drift if g.max_drift > 0 else 0.0
        self.task: asyncio.Task | None = None
        self._opened = 0.0  # time.monotonic() at the stage's start (drift windows)
        self._drift_judged: tuple = ()  # the windows last compared, and the verdict
        self._drift_warned = False
        self._cand = self._stable = None  # Windows
        self._shadow = (0, 0)  # (compared, agree) at window start

    # -- windows and guards --------------------------------------------------------------

    def open_window(self) -> None:
        route = self.manager.table.routes.get(self.route)
        if route is None or route.rollout is not self:
            return
        self._cand = Window(route.stats[1])
        self._stable = Window(route.stats[0])
        self._opened = time.monotonic()
        s = route.shadow.stats if route.shadow is not None else None
        self._shadow = (s.compared, s.agree) if s is not None else (0, 0)

    def on_failure(self) -> None:
        """A candidate request failed (hot path, failures only): judge errors now."""
        if self.status.state in (RUNNING, PAUSED, AWAITING):
            reason = self._check_errors()
            if reason:
                self.manager.rollback_now(self.route, reason)

    def _variants(self):
        route = self.manager.table.routes.get(self.route)
        if route is None or route.rollout is not self or self._cand is None:
            return None
        return route

    def _check_errors(self) -> str:
        route = self._variants()
        if route is None:
            return ""
        n, failed, _ = self._cand.delta(route.stats[1])
        if n < self.min_requests:
            return ""
        sn, sfailed, _ = self._stable.delta(route.stats[0])
        rate = failed / n
        stable_rate = sfailed / sn if sn else 0.0
        if rate - stable_rate > self.max_error_rate:
            return (
                f"error rate guard: candidate {rate:.1%} of {n} requests failed, stable "
                f"{stable_rate:.1%} (allowed difference {self.max_error_rate:.1%})"
            )
        return ""

    def evaluate(self) -> str:
        """Every guard; the breach's description, or ""."""
        reason = self._check_errors()
        if reason:
            return reason
        route = self._variants()
        if route is None:
            return ""
        n, _, counts = self._cand.delta(route.stats[1])
        if n >= self.min_requests:
            p99 = p99_ns(counts)
            if self.max_p99_ms and p99 is not None and p99 > self.max_p99_ms * 1e6:
                return (
                    f"p99 guard: candidate p99 in the <= {p99 / 1e6:g} ms bucket, limit "
                    f"{self.max_p99_ms:g} ms"
                )
            sn, _, scounts = self._stable.delta(route.stats[0])
            if self.max_p99_ratio and sn >= self.min_requests and p99 is not None:
                sp99 = p99_ns(scounts)
                if sp99 and p99 > sp99 * self.max_p99_ratio:
                    return (
                        f"p99 guard: candidate p99 {p99 / 1e6:g} ms vs stable {sp99 / 1e6:g} ms "
                        f"(allowed ratio {self.max_p99_ratio:g})"
                    )
        if self.max_drift:
            reason = self._check_drift(route)
            if reason:
                return reason
        shadow = route.shadow
        if self.max_disagreement and shadow is not None and shadow.model == route.targets[1].model:
            compared = shadow.stats.compared - self._shadow[0]
            agree = shadow.stats.agree - self._shadow[1]
            if compared >= self.min_requests:
                rate = 1.0 - agree / compared
                if rate > self.max_disagreement:
                    return (
                        f"shadow guard: candidate disagrees with stable on {rate:.1%} of "
                        f"{compared} mirrored requests (allowed {self.max_disagreement:.1%})"
                    )
        return ""

    def _drift_monitors(self, route):
        """(candidate's, stable's) drift monitors; None for a version without one."""
        found = []
        for target in (route.targets[1], route.targets[0]):
            try:
                model = self.manager.repository.resolve(target.model, target.version)
            except TensorGateError:
                model = None
            found.append(getattr(model, "drift_monitor", None))
        if found[0] is None and not self._drift_warned:
            self._drift_warned = True
            log.warning("route %s: max_drift is set but the candidate %s:%s has no drift "
                        "profile (or drift monitoring is off): the drift guard cannot "
                        "judge", self.route, route.targets[1].model,
                        route.targets[1].version or "default")
        return found[0], found[1]

    def _check_drift(self, route) -> str:
        cand, stable = self._drift_monitors(route)
        window = cand.last if cand is not None else None
        if window is None or window.ended < self._opened:
            return ""
        if window.score > self.max_drift:
            return (
                f"drift guard: candidate {cand.label}: feature {window.worst} PSI "
                f"{window.score:.3f} against its profile over {window.rows} rows (limit "
                f"{self.max_drift:g})"
            )
        theirs = stable.last if stable is not None else None
        if theirs is None or theirs.ended < self._opened:
            return ""
        key = (window, theirs)
        if self._drift_judged[:2] == key:  # windows close every few seconds; ticks are 0.1 s
            return self._drift_judged[2]
        value, feature = prediction_drift(stable, theirs, window)
        reason = ""
        if value > self.max_drift:
            reason = (
                f"drift guard: candidate {cand.label}'s output {feature} differs from stable "
                f"{stable.label}'s: PSI {value:.3f} over windows of {window.rows} and "
                f"{theirs.rows} rows (limit {self.max_drift:g})"
            )
        self._drift_judged = key + (reason,)
        return reason

    def _stage_done(self, held: float) -> bool:
        """Whether the current stage may advance; says what it waits for otherwise
        (status.waiting_for, status.stage_requests)."""
        route = self._variants()
        n = self._cand.delta(route.stats[1])[0] if route is not None else 0
        status = self.status
        status.stage_requests = n
        waits = []
        if held < self.hold:
            waits.append(f"hold: {self.hold - held:.0f} s of {self.hold:g} s left")
        if n < self.min_requests:
            waits.append(f"requests: {n} of {self.min_requests} on the candidate")
        if self.max_drift and route is not None:
            cand = self._drift_monitors(route)[0]
            if cand is not None and (cand.last is None or cand.last.ended < self._opened):
                waits.append("drift: no candidate drift window closed in this stage yet")
        status.waiting_for = "; ".join(waits)
        return not waits

    # -- the driver ----------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._drive())

    def stop(self) -> None:
        task = self.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self.task = None

    async def _drive(self) -> None:
        try:
            first = True  # the current stage's weights and window are already in place
            while self.status.state in ACTIVE:
                stage = self.status.stage
                if not first:
                    self.manager.apply_stage(self.route, stage)
                    self.open_window()
                first = False
                held = 0.0
                while self.status.state in ACTIVE:
                    await asyncio.sleep(TICK_S)
                    reason = self.evaluate()
                    if reason:
                        self.manager.rollback_now(self.route, reason)
                        return
                    if self.status.state == RUNNING:
                        held += TICK_S
                        # A stage advances once it was held AND its candidate saw the
                        # minimum traffic: a stage nobody called proves nothing.
                        if self._stage_done(held):
                            break
                if self.status.state != RUNNING:
                    return
                if stage + 1 < len(self.stages):
                    self.status.stage = stage + 1
                    continue
                if self.status.spec.auto_promote:
                    self.manager.promote_now(self.route, "automatic promotion after the last stage")
                    return
                self.manager.await_promotion(self.route)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rollout of route %s failed; rolling back", self.route)
            self.manager.rollback_now(self.route, "internal error in the rollout driver")
