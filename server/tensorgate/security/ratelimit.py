"""Per-client token buckets (keyed by token id, or peer host without auth).

All calls happen on the event loop thread, so no locking. The table is bounded: when it
reaches ``max_clients`` entries, buckets that refilled completely (idle clients) are
dropped; if none is idle, the oldest half goes.
"""

from __future__ import annotations

import time

_monotonic = time.monotonic


class RateLimiter:
    def __init__(self, rps: float, burst: int, max_clients: int = 65536) -> None:
        if rps <= 0 or burst < 1:
            raise ValueError("rate limiter needs rps > 0 and burst >= 1")
        self.rps = float(rps)
        self.burst = float(burst)
        self._max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]

    def allow(self, key: str, now: float | None = None) -> bool:
        """Take one token from ``key``'s bucket; False when it is empty."""
        if now is None:
            now = _monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._evict(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rps
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def __len__(self) -> int:
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        full = [
            k for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rps >= self.burst
        ]
        if not full:
            full = list(self._buckets)[: max(1, len(self._buckets) // 2)]
        for k in full:
            del self._buckets[k]

    def describe(self) -> str:
        return f"{self.rps:g} requests/s, burst {int(self.burst)}"
