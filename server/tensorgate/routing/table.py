"""The hot path of routing: an immutable snapshot of compiled routes.

A request names a route as its ``model_name``; ``RouteTable.routes`` is one dict lookup
away from a ``CompiledRoute``, which picks a target:

- weighted random: cumulative weights precomputed at route change, one ``random()``
  and one ``bisect`` per request;
- sticky (a route key is present and the route is sticky): the key's BLAKE2b hash
  (stable across processes and restarts, unlike ``hash()``) is a point in the route's
  key space, and one ``bisect`` over the route's key ranges (layout.py) names its
  target. The manager keeps those ranges across weight changes so that a key keeps its
  variant unless it must move; computed only for sticky requests.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass
from hashlib import blake2b

from tensorgate.observability.stats import Buckets, LATENCY_BOUNDS_NS
from tensorgate.routing import layout

_random = random.random
_HASH_SHIFT = 64 - layout.SPACE.bit_length() + 1  # a 64-bit hash to a point in SPACE


class VariantStats:
    """Per route variant counters (event loop thread only), read by /metrics."""

    __slots__ = ("requests", "failures", "latency")

    def __init__(self) -> None:
        self.requests = 0
        self.failures = 0
        self.latency = Buckets(LATENCY_BOUNDS_NS)


class ShadowStats:
    """Agreement between a route's primary answers and its shadow candidate's."""

    __slots__ = ("sent", "failed", "skipped", "compared", "exact", "agree",
                 "top1_rows", "top1_agree", "max_abs_diff", "diff_hist", "latency")

    def __init__(self) -> None:
        self.sent = self.failed = self.skipped = 0
        self.compared = self.exact = self.agree = 0
        self.top1_rows = self.top1_agree = 0
        self.max_abs_diff = 0.0
        self.diff_hist = Buckets(DIFF_BOUNDS)
        self.latency = Buckets(LATENCY_BOUNDS_NS)

    @property
    def disagreement(self) -> float:
        return 0.0 if not self.compared else 1.0 - self.agree / self.compared


DIFF_BOUNDS = (0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass(frozen=True)
class Target:
    model: str
    version: str  # "" = the model's default version
    weight: float  # percent
    label: str  # "model:version" (or "model:default"): metrics' variant, key ranges' owner


@dataclass(frozen=True)
class ShadowTarget:
    model: str
    version: str
    fraction: float
    atol: float
    stats: ShadowStats


class CompiledRoute:
    """One route, ready for the hot path. Immutable once built (a change builds a new
    one); the stats objects are shared with the previous compilation of the route."""

    __slots__ = ("name", "targets", "cum", "sticky", "stats", "shadow", "rollout",
                 "candidate", "range_starts", "range_targets")

    def __init__(self, name: str, targets: list[Target], sticky: bool,
                 stats: list[VariantStats], shadow: ShadowTarget | None,
                 rollout=None, candidate: int = -1,
                 key_ranges: layout.Ranges | None = None) -> None:
        """``key_ranges``: the sticky layout the manager keeps for this route; None
        lays the key space out afresh from the weights."""
        live = [t for t in targets if t.weight > 0]
        total = sum(t.weight for t in live) or 1.0
        self.name = name
        self.targets = tuple(targets)
        running = 0.0
        cum = []
        for t in targets:
            running += max(t.weight, 0.0) / total
            cum.append(running)
        # Zero-weight targets keep their slot (bisect skips them: equal cum values); from
        # the last positive one on, 2.0: random() < 1 and rounding can't reach past it.
        last = max((i for i, t in enumerate(targets) if t.weight > 0), default=len(cum) - 1)
        for i in range(last, len(cum)):
            cum[i] = 2.0
        self.cum = tuple(cum)
        self.sticky = sticky
        self.stats = tuple(stats)
        self.shadow = shadow
        self.rollout = rollout  # the Rollout driving this route's weights, or None
        self.candidate = candidate  # index of the rollout candidate in targets, or -1
        if key_ranges is None:
            key_ranges = layout.rebalance([], [(t.label, t.weight) for t in targets])
        index = {t.label: i for i, t in enumerate(targets)}
        self.range_starts = tuple(start for start, _ in key_ranges)
        self.range_targets = tuple(index[label] for _, label in key_ranges)

    def pick(self, key: str | None) -> int:
        """The index of the target this request goes to."""
        if key is None or not self.sticky:
            if len(self.cum) == 1:
                return 0
            return bisect_right(self.cum, _random())
        return self.pick_sticky(key)

    def pick_sticky(self, key: str) -> int:
        hk = int.from_bytes(
            blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
        )
        return self.range_targets[bisect_right(self.range_starts, hk >> _HASH_SHIFT) - 1]


def make_target(model: str, version: str, weight: float) -> Target:
    return Target(model, version, float(weight), target_label(model, version))


def target_label(model: str, version: str) -> str:
    return f"{model}:{version or 'default'}"


@dataclass(frozen=True)
class RouteTable:
    """Every route, compiled; swapped as a whole on change."""

    routes: dict[str, CompiledRoute]
