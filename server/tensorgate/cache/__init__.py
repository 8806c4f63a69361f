"""Triton's response cache for TensorGate: see response.py (the cache), key.py (what a
request's key covers), lru.py (the bound by bytes) and remote.py (the Redis tier)."""

from tensorgate.cache.key import request_key
from tensorgate.cache.response import ResponseCache, VersionCache

__all__ = ["ResponseCache", "VersionCache", "request_key"]
