"""The response cache's Redis tier: answers shared by the replicas that name one Redis.

redis-py's asyncio client (``redis.asyncio``), so the event loop never waits on a
socket: a lookup is one GET awaited by the request that missed locally, a store is one
SET with the TTL in a task nobody waits for. Every call has a short socket timeout
(``--cache-redis-timeout-ms``, 100) and no retries. A Redis that fails (down, refusing, slow past the timeout) makes lookups
misses and stores skipped, never failed requests: after a failure Redis is left alone
for a while (1 s, doubling to 30 s while it keeps failing), and a WARNING says so at
most every 30 s.

Keys: ``tensorgate:rc1:<model>:<version>:<fingerprint>:<request digest hex>``, where the
fingerprint is a hash of the version's files and completed config
(response.version_fingerprint), so no two models, versions, or different files under
one version number share an entry, on one replica or across several. Values: a small
header (magic, then JSON: name, datatype, shape and byte count of each output and each
answer tensor) and their bytes; a tensor that is an output as it came is stored once.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import orjson

from tensorgate._ext.codec import BytesTensorError, decode_bytes_tensor, encode_bytes_tensor
from tensorgate.dtypes import BY_WIRE

log = logging.getLogger("tensorgate.cache")

NAMESPACE = "tensorgate:rc1"  # rc1: this layout of keys and values
TIMEOUT_S = 0.1  # connect and per-call socket timeout (--cache-redis-timeout-ms)
MAX_CONNECTIONS = 256
MAX_INFLIGHT = 128  # lookups and stores in flight at once; past it Redis is skipped
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
WARN_EVERY_S = 30.0

_MAGIC = b"TGRC1\n"
_WIRE_OF = {d.numpy: d.wire for d in BY_WIRE.values() if d.wire != "BYTES"}
_HEAD = len(_MAGIC) + 4


def _raw(data) -> tuple[str, object]:
    """(datatype, bytes-like) of an output array or a tensor's data."""
    if not isinstance(data, np.ndarray):
        return "BYTES", data  # a tensor's v2 BYTES encoding
    if data.dtype.kind == "O":  # a string output: its elements in the v2 encoding
        return "BYTES", encode_bytes_tensor(data)
    return _WIRE_OF[data.dtype], data


def _nbytes(raw) -> int:
    return raw.nbytes if isinstance(raw, np.ndarray) else len(raw)


def encode_value(tensors, outputs: dict) -> bytes:
    """One answer as a Redis value: its outputs by name, then its (name, datatype,
    shape, data) tensors, each tensor that is an output as it came only by reference."""
    head_outputs, head_tensors, chunks = [], [], []
    for name, value in outputs.items():
        datatype, raw = _raw(value)
        head_outputs.append([name, datatype, list(value.shape), _nbytes(raw)])
        chunks.append(raw)
    for name, datatype, shape, data in tensors:
        if data is outputs.get(name):
            head_tensors.append([name, datatype, list(shape), -1])
            continue
        _, raw = _raw(data)
        head_tensors.append([name, datatype, list(shape), _nbytes(raw)])
        chunks.append(raw)
    header = orjson.dumps({"o": head_outputs, "t": head_tensors})
    return b"".join([_MAGIC, len(header).to_bytes(4, "little"), header, *chunks])


def decode_value(value: bytes) -> tuple[list, dict]:
    """(tensors, outputs) of a value written by encode_value; numeric data are
    read-only views into ``value``, string outputs str elements again. ValueError for
    anything else."""
    if not value.startswith(_MAGIC) or len(value) < _HEAD:
        raise ValueError("not a TensorGate cache value")
    size = int.from_bytes(value[len(_MAGIC):_HEAD], "little")
    try:
        header = orjson.loads(value[_HEAD:_HEAD + size])
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"bad header: {exc}") from None
    view = memoryview(value)
    offset = _HEAD + size

    def take(nbytes: int):
        nonlocal offset
        chunk = view[offset:offset + nbytes]
        offset += nbytes
        if len(chunk) != nbytes:
            raise ValueError("value cut short")
        return chunk

    outputs = {}
    tensors = []
    try:
        for name, datatype, shape, nbytes in header["o"]:
            chunk = take(nbytes)
            if datatype == "BYTES":
                count = int(np.prod(shape, dtype=np.int64))
                flat = decode_bytes_tensor(chunk, count)
                arr = np.empty(count, dtype=object)
                arr[:] = [x.decode("utf-8", "surrogateescape") for x in flat]
                outputs[name] = arr.reshape(shape)
            else:
                outputs[name] = np.frombuffer(chunk, BY_WIRE[datatype].numpy).reshape(shape)
        for name, datatype, shape, nbytes in header["t"]:
            if nbytes == -1:
                data = outputs[name]
            elif datatype == "BYTES":
                data = bytes(take(nbytes))
            else:
                data = np.frombuffer(take(nbytes), BY_WIRE[datatype].numpy).reshape(shape)
            tensors.append((name, datatype, tuple(shape), data))
    except (KeyError, TypeError, BytesTensorError) as exc:
        raise ValueError(f"bad header or data: {exc!r}") from None
    if offset != len(value):
        raise ValueError("trailing bytes")
    return tensors, outputs


def shown_url(url: str) -> str:
    """The URL without credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    return scheme + sep + rest.rpartition("@")[2]


class RedisTier:
    """GET and SET against one Redis, failing soft; counters for /metrics."""

    def __init__(self, url: str, ttl_secs: int, timeout_s: float = TIMEOUT_S) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise RuntimeError(
                "--cache-redis-url needs the redis package: pip install 'tensorgate[redis]'"
            ) from None
        self.where = shown_url(url)
        self.ttl_secs = ttl_secs
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0), max_connections=MAX_CONNECTIONS,
        )
        # Counters (read by the metrics thread): lookups that found an answer, that
        # found none, that failed; stores done, failed; calls skipped (Redis resting
        # after a failure, or too many in flight); values that did not decode.
        self.hits = self.misses = self.errors = 0
        self.stored = self.store_errors = self.skipped = self.corrupt = 0
        self._inflight = 0
        self._down_until = 0.0
        self._backoff = 0.0
        self._warned_at = -1e18
        self._unwarned = 0
        self._tasks: set[asyncio.Task] = set()

    def _usable(self) -> bool:
        if self._inflight >= MAX_INFLIGHT or (
            self._backoff and time.monotonic() < self._down_until
        ):
            self.skipped += 1
            return False
        return True

    async def get(self, key: str) -> bytes | None:
        """The value under ``key``, or None: absent, or Redis unusable (never raises
        but for cancellation)."""
        if not self._usable():
            return None
        self._inflight += 1
        try:
            value = await self._client.get(key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis-py's errors, OSError, timeouts: all a miss
            self.errors += 1
            self._failed(exc)
            return None
        finally:
            self._inflight -= 1
        self._recovered()
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def store(self, key: str, value: bytes) -> None:
        """SET ``key`` with the TTL in the background."""
        if not self._usable():
            return
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._set(key, value))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _set(self, key: str, value: bytes) -> None:
        try:
            await self._client.set(key, value, ex=self.ttl_secs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.store_errors += 1
            self._failed(exc)
            return
        finally:
            self._inflight -= 1
        self.stored += 1
        self._recovered()

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._backoff = min(max(self._backoff * 2, BACKOFF_FIRST_S), BACKOFF_MAX_S)
        self._down_until = now + self._backoff
        if now - self._warned_at < WARN_EVERY_S:
            self._unwarned += 1
            return
        log.warning(
            "response cache: Redis at %s failed (%s: %s); answering from the local cache "
            "and the models, Redis is tried again in %.0f s (%d more failure(s) since the "
            "last warning)", self.where, type(exc).__name__, exc, self._backoff,
            self._unwarned,
        )
        self._warned_at = now
        self._unwarned = 0

    def _recovered(self) -> None:
        if self._backoff:
            log.info("response cache: Redis at %s answers again", self.where)
            self._backoff = 0.0

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        try:
            await self._client.aclose()
        except Exception:  # closing a connection to a Redis that is gone
            pass
