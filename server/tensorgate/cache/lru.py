"""A least-recently-used map bounded by bytes.

Each entry says its own ``size``; putting one past the capacity evicts from the least
recently used end until the total fits. Used on the event loop thread only (no locks);
the metrics thread reads ``bytes`` and ``len()``, plain integers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class LRU:
    def __init__(self, capacity: int, on_evict: Callable | None = None) -> None:
        self.capacity = capacity
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict = OrderedDict()
        self._on_evict = on_evict  # called (key, entry) for every entry evicted or popped

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    def get(self, key):
        """The entry, now the most recently used; None when absent."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key, entry) -> bool:
        """Insert (or replace) ``key``; False when the entry alone is over capacity
        (then nothing changes)."""
        size = entry.size
        if size > self.capacity:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
            if self._on_evict is not None:
                self._on_evict(key, old)
        self._entries[key] = entry
        self.bytes += size
        while self.bytes > self.capacity:
            evicted_key, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.size
            self.evictions += 1
            if self._on_evict is not None:
                self._on_evict(evicted_key, evicted)
        return True

    def pop(self, key):
        """Remove ``key`` (not an eviction); its entry or None."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size
            if self._on_evict is not None:
                self._on_evict(key, entry)
        return entry

    def keys(self) -> list:
        """Keys, least recently used first (a copy)."""
        return list(self._entries)
