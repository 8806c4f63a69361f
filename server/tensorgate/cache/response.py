"""The response cache: answers to repeated requests, per model version, LRU by bytes.

Triton's response cache (``response_cache { enable: true }`` in a model's config.pbtxt,
a server-wide size): a request whose inputs and asked-for outputs a version has
answered before gets that answer again without running the model. The data plane asks
(dataplane.DataPlane._cached); this module keeps the answers.

- **One LRU for the server**, bounded by ``--cache-size`` bytes: each entry counts its
  tensors' bytes plus a fixed allowance for its Python objects; the least recently used
  entries are evicted first. An answer bigger than the whole cache is not kept.
- **Per version.** Every loaded ModelVersion with the cache on gets a ``VersionCache``
  (its ``response_cache`` attribute, decided once, on its first request or when it
  loaded); entries are keyed by it, so no version, and no reload of a version number
  from changed files, can be answered from another's entries. When a version leaves
  the serving table (unload, reload, removal; ``ResponseCache`` listens to the
  repository), its entries are dropped at once.
- **Copies.** An entry holds copies of the answer's tensors and of the run's outputs
  (never views into batch buffers), read-only, shared by every hit: the front ends
  encode the tensors as they encode a computed answer, so a hit is byte-identical on
  gRPC and HTTP, and observers and a route's shadow get every output, as after a run.
- **Redis** (optional, remote.py): a second tier behind the local one, shared by
  replicas, keyed by a fingerprint of the version's files and config.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from hashlib import blake2b
from pathlib import Path

import numpy as np

from tensorgate.cache.lru import LRU
from tensorgate.cache.remote import NAMESPACE, RedisTier, decode_value, encode_value
from tensorgate.runtime.model import READY

log = logging.getLogger("tensorgate.cache")
_perf_ns = time.perf_counter_ns

# Bytes counted per entry and per array beyond the data: the entry, its tuples and
# dict, the array objects, the key and the LRU's link (tracemalloc: 850 bytes for an
# answer of one 32-byte tensor, which these count as 871); per string element of a
# BYTES output, the str object.
ENTRY_OVERHEAD = 512
TENSOR_OVERHEAD = 320
STRING_OVERHEAD = 56


class Entry:
    """One cached answer: the data plane's tensors (what the front ends encode) and the
    run's outputs by name (what observers and a route's shadow see)."""

    __slots__ = ("owner", "tensors", "outputs", "size")

    def __init__(self, owner: VersionCache, tensors: list, outputs: dict, size: int) -> None:
        self.owner = owner
        self.tensors = tensors
        self.outputs = outputs
        self.size = size


def _frozen(value: np.ndarray) -> np.ndarray:
    copy = np.array(value, order="C")  # never a view into a batch's buffers
    copy.flags.writeable = False
    return copy


def _size(value) -> int:
    if not isinstance(value, np.ndarray):
        return len(value)  # bytes: a BYTES tensor in its v2 encoding
    if value.dtype.kind == "O":  # str elements: the objects, not only their pointers
        return value.size * STRING_OVERHEAD + sum(len(x) for x in value.flat)
    return value.nbytes


def make_entry(owner: VersionCache, tensors, outputs: dict, copy: bool = True) -> Entry:
    """An entry holding read-only copies of ``tensors`` (BYTES data are bytes, immutable
    already) and of ``outputs``, one copy where a tensor is an output as it came;
    ``copy=False`` for arrays nothing else holds (decoded from Redis)."""
    kept_outputs = {}
    size = ENTRY_OVERHEAD
    for name, value in outputs.items():
        kept_outputs[name] = _frozen(value) if copy else value
        size += _size(value) + TENSOR_OVERHEAD + len(name)
    kept = []
    for name, datatype, shape, data in tensors:
        if data is outputs.get(name):
            data = kept_outputs[name]
        else:
            if copy and isinstance(data, np.ndarray):
                data = _frozen(data)
            size += _size(data) + TENSOR_OVERHEAD
        kept.append((name, datatype, tuple(shape), data))
    return Entry(owner, kept, kept_outputs, size)


def version_fingerprint(model, version_dir: Path) -> str:
    """A hash of what a version's answers depend on: its completed config, class
    labels, and every file under its version directory (names, sizes, contents)."""
    h = blake2b(digest_size=16)
    h.update(model.config.SerializeToString(deterministic=True))
    h.update(repr(sorted(model.labels.items())).encode())
    for path in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            h.update(repr((path.relative_to(version_dir).as_posix(),
                           path.stat().st_size)).encode())
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class VersionCache:
    """One model version's part of the cache (``model.response_cache``)."""

    __slots__ = ("owner", "serial", "model", "stats", "keys", "closed", "remote", "prefix")

    def __init__(self, owner: ResponseCache, serial: int, model) -> None:
        self.owner = owner
        self.serial = serial
        self.model = model
        self.stats = model.stats  # VersionStats: cache_hit, cache_miss
        self.keys: set = set()  # its keys in the LRU
        self.closed = False
        self.remote: RedisTier | None = None  # set once the fingerprint is known
        self.prefix = ""

    def get(self, digest: bytes) -> Entry | None:
        return self.owner.lru.get((self.serial, digest))

    async def fetch(self, digest: bytes) -> Entry | None:
        """Redis, after a local miss; a found answer is kept locally too."""
        remote = self.remote
        value = await remote.get(self.prefix + digest.hex())
        if value is None:
            return None
        try:
            tensors, outputs = decode_value(value)
        except ValueError as exc:
            remote.corrupt += 1
            log.debug("response cache: undecodable Redis value under %s (%s)", self.prefix, exc)
            return None
        entry = make_entry(self, tensors, outputs, copy=False)
        self._keep(digest, entry)
        return entry

    def hit(self, ns: int) -> None:
        """A lookup that found the answer, in ``ns`` (Triton's cache_hit)."""
        self.stats.cache_hit.add(ns)
        self.owner.hits += 1
        self.owner.looked(ns)

    def miss(self, ns: int) -> None:
        """A lookup that found none (Triton's cache_miss; put adds the insertion)."""
        self.stats.cache_miss.add(ns)
        self.owner.misses += 1
        self.owner.looked(ns)

    def put(self, digest: bytes, tensors: list, outputs: dict) -> None:
        """Keep a computed answer (after a miss); its insertion time adds to the miss."""
        if self.closed:
            return
        started = _perf_ns()
        entry = make_entry(self, tensors, outputs)
        self._keep(digest, entry)
        if self.remote is not None:
            self.remote.store(self.prefix + digest.hex(),
                              encode_value(entry.tensors, entry.outputs))
        ns = _perf_ns() - started
        self.stats.cache_miss.ns += ns
        self.owner.insertion_ns += ns

    def _keep(self, digest: bytes, entry: Entry) -> None:
        if self.closed:
            return
        key = (self.serial, digest)
        if self.owner.lru.put(key, entry):
            self.keys.add(key)


class ResponseCache:
    """The server's cache: one LRU over every version with the cache on, Redis behind
    it when configured. A repository listener (``repository.listeners``)."""

    def __init__(self, capacity: int, repository, remote: RedisTier | None = None) -> None:
        self.lru = LRU(capacity, self._removed)
        self.remote = remote
        self._repository = repository
        self._versions: dict[int, VersionCache] = {}
        self._serials = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        # Server-wide counters (Triton's nv_cache_* families), read by the metrics thread.
        self.lookups = self.hits = self.misses = 0
        self.lookup_ns = self.insertion_ns = 0

    # -- versions -------------------------------------------------------------------

    def attach(self, model) -> VersionCache | None:
        """Decide once for a version: its VersionCache, or None (cache off in its
        config, or it no longer serves); sets ``model.response_cache``."""
        cache = None
        config = model.config
        if config.response_cache.enable and config.HasField("ensemble_scheduling"):
            # As Triton: an ensemble's answers depend on its steps' versions, which
            # change under it; its own requests are not cached.
            log.warning("response cache: %s is an ensemble: its response_cache is not "
                        "used (its steps run uncached too)", model.label)
        elif config.response_cache.enable and model.state == READY:
            cache = VersionCache(self, next(self._serials), model)
            self._versions[cache.serial] = cache
            if self.remote is not None:
                self._spawn(self._fingerprint(cache))
        model.response_cache = cache
        return cache

    def looked(self, ns: int) -> None:
        self.lookups += 1
        self.lookup_ns += ns

    def drop(self, cache: VersionCache) -> None:
        """A version left the serving table: its entries go, and none come back."""
        cache.closed = True
        cache.remote = None
        self._versions.pop(cache.serial, None)
        for key in list(cache.keys):
            self.lru.pop(key)
        cache.model = None

    def _removed(self, key, entry: Entry) -> None:
        entry.owner.keys.discard(key)

    async def __call__(self, event: str, name: str, **fields) -> None:
        """Repository changes: drop versions that stopped serving; attach new ones."""
        serving = {id(m) for m in self._repository.models()}
        for cache in list(self._versions.values()):
            if id(cache.model) not in serving:
                self.drop(cache)
        if event == "loaded":
            for model in self._repository.versions_of(name):
                if "response_cache" not in vars(model):
                    self.attach(model)

    # -- Redis fingerprints -----------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fingerprint(self, cache: VersionCache) -> None:
        model = cache.model
        try:
            version_dir = self._repository.paths.model_dir(model.name) / str(model.version)
            fingerprint = await asyncio.to_thread(version_fingerprint, model, version_dir)
        except Exception as exc:  # files gone meanwhile: this version stays local only
            log.warning("response cache: %s: no Redis tier for this version (%s)",
                        model.label, exc)
            return
        if not cache.closed:
            cache.prefix = f"{NAMESPACE}:{model.name}:{model.version}:{fingerprint}:"
            cache.remote = self.remote
            log.info("response cache: %s shares answers through Redis at %s (prefix %s)",
                     model.label, self.remote.where, cache.prefix)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.remote is not None:
            await self.remote.close()
