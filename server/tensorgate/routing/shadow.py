"""Shadow traffic: mirror a fraction of a route's requests to a candidate, compare.

The mirrored run is an ``asyncio`` task the caller never awaits (its reference is kept
in a set until it ends); its answer is discarded, its failure only counted. A cap on
shadow runs in flight protects the primary path: past it, mirrors are skipped (counted).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import numpy as np

from tensorgate.routing.table import CompiledRoute, ShadowStats

log = logging.getLogger("tensorgate.routing")

MAX_SHADOW_INFLIGHT = 256
_random = random.random


def compare(primary: dict, shadow: dict, atol: float) -> tuple[bool, float, int, int, bool]:
    """(exact match, max abs diff, top-1 rows, top-1 agreeing rows, agreement) over the
    outputs both answers have. Top-1 is judged on float outputs with a class axis
    (rank >= 2, last dimension > 1), row by row."""
    exact = True
    worst = 0.0
    rows = agree_rows = 0
    for name, a in primary.items():
        b = shadow.get(name)
        if b is None or a.shape != b.shape:
            return False, float("inf"), 0, 0, False
        if a.dtype == object or b.dtype == object:
            same = bool(np.array_equal(a, b))
            exact &= same
            worst = max(worst, 0.0 if same else float("inf"))
            continue
        if a.size == 0:
            continue
        if not np.array_equal(a, b):
            exact = False
            diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            worst = max(worst, diff if diff == diff else float("inf"))  # NaN -> inf
        if a.ndim >= 2 and a.shape[-1] > 1 and a.dtype.kind == "f":
            same = a.argmax(-1) == b.argmax(-1)
            rows += same.size
            agree_rows += int(same.sum())
    agree = exact or (worst <= atol and agree_rows == rows)
    return exact, worst, rows, agree_rows, agree


class ShadowRunner:
    def __init__(self, repository) -> None:
        self._repository = repository
        self._tasks: set[asyncio.Task] = set()

    def maybe_mirror(
        self, route: CompiledRoute, arrays, rows: int, shape_key, outputs, dataplane
    ) -> None:
        """Called by the data plane after the primary answered; costs one random()
        when not mirrored. The mirror runs through ``dataplane.run_prepared``, the
        path live requests take."""
        shadow = route.shadow
        if _random() >= shadow.fraction:
            return
        if len(self._tasks) >= MAX_SHADOW_INFLIGHT:
            shadow.stats.skipped += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._run(shadow, arrays, rows, shape_key, outputs, dataplane)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, shadow, arrays, rows, shape_key, primary, dataplane) -> None:
        stats: ShadowStats = shadow.stats
        stats.sent += 1
        started = time.perf_counter_ns()
        try:
            model = self._repository.resolve(shadow.model, shadow.version)
        except Exception:
            stats.failed += 1
            return
        try:
            outputs = await dataplane.run_prepared(model, arrays, rows, shape_key)
        except asyncio.CancelledError:
            stats.failed += 1
            raise
        except Exception as exc:  # counted, never seen by the caller
            stats.failed += 1
            log.debug("shadow %s failed: %s", model.label, exc)
            return
        stats.latency.observe(time.perf_counter_ns() - started)
        try:
            exact, diff, top_rows, top_agree, agree = compare(primary, outputs, shadow.atol)
        except Exception:  # incomparable answers count as disagreement
            exact, diff, top_rows, top_agree, agree = False, float("inf"), 0, 0, False
        stats.compared += 1
        stats.exact += exact
        stats.agree += agree
        stats.top1_rows += top_rows
        stats.top1_agree += top_agree
        if diff > stats.max_abs_diff:
            stats.max_abs_diff = diff
        stats.diff_hist.observe(diff)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
