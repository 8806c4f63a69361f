"""The hot path of routing: an immutable snapshot of compiled routes.

A request names a route as its ``model_name``; ``RouteTable.routes`` is one dict lookup
away from a ``CompiledRoute``, which picks a target:

- weighted random: cumulative weights precomputed at route change, one ``random()``
  and one ``bisect`` per request;
- sticky (a route key is present and the route is sticky): weighted rendezvous hashing
  (highest random weight). Each target scores ``weight / -ln(u)`` with ``u`` a stable
  hash of (target, key) in (0, 1); the key goes to the top score. Raising a target's
  weight only moves keys onto it, lowering it only moves keys off it: a key keeps its
  variant unless it must move. The key's BLAKE2b hash (stable across processes and
  restarts, unlike ``hash()``) is mixed with each target's seed by splitmix64's
  finaliser; computed only for sticky requests.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass
from hashlib import blake2b

from tensorgate.observability.stats import Buckets, LATENCY_BOUNDS_NS

_random = random.random
_log = math.log
_TWO64 = float(1 << 64)
_MASK = (1 << 64) - 1


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
    label: str  # "model:version" (or "model:default"), the metrics' variant label
    seed: int  # 64-bit seed of rendezvous scores, from the target's label


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
                 "candidate")

    def __init__(self, name: str, targets: list[Target], sticky: bool,
                 stats: list[VariantStats], shadow: ShadowTarget | None,
                 rollout=None, candidate: int = -1) -> None:
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
        best = -1.0
        chosen = 0
        for i, t in enumerate(self.targets):
            if t.weight <= 0:
                continue
            # splitmix64's finaliser of (key hash ^ target seed): a per-target uniform
            # 64-bit value from one BLAKE2b per request, whatever the number of targets.
            x = hk ^ t.seed
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
            x ^= x >> 31
            score = t.weight / -_log((x + 0.5) / _TWO64)
            if score > best:
                best, chosen = score, i
        return chosen


def make_target(model: str, version: str, weight: float) -> Target:
    label = f"{model}:{version or 'default'}"
    # The hash key names the model and version, not the weight: a key's score for a
    # target changes only with the weight, which is what makes moves minimal.
    seed = int.from_bytes(blake2b(label.encode(), digest_size=8).digest(), "little")
    return Target(model, version, float(weight), label, seed)


@dataclass(frozen=True)
class RouteTable:
    """Every route, compiled; swapped as a whole on change."""

    routes: dict[str, CompiledRoute]
