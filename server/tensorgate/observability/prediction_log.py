"""Prediction logs: a sampled share of served requests, with their tensors, as Parquet.

``--prediction-log-dir DIR`` puts a ``PredictionLog`` on the data plane's observer list
(nothing is on it, and nothing is paid, without the flag). Per request that reached a
model version the observer, on the event loop, draws a random number and appends one
capture (the request's validated input arrays and output arrays, already in memory) to
a bounded queue; a full queue drops the capture and counts it. A writer thread drains
the queue every ``DRAIN_INTERVAL_S``, turns the captures into Arrow columns (tensor data
is copied here, off the loop; hashes are computed here) and writes Parquet files:

    DIR/<model>/<YYYY-MM-DD>/part-<HHMMSS>-<run>-<n>.parquet

(UTC date and time the file was started, a random token per server process, a counter).
A file is made in memory (a mapping reused from file to file, direct_write) and written
out whole, with O_DIRECT where the file system takes it, under a hidden temporary name
(``.part-...parquet.tmp``, which pyarrow's dataset readers skip), synced and renamed,
when it reaches the rotation size or age, when the UTC date changes, when its model's
columns change (a new version with other tensors), and on graceful shutdown
(SIGTERM/SIGINT). A crash loses the queue and the file being made, no more (bounded by
the rotation size and age).

One row per request. Columns: ``timestamp`` (UTC, µs: when the request reached the model
version), ``model``, ``version``, ``route`` and ``variant`` (the route's name and the
target ``model:version`` it picked; null when the request named the model), ``request_id``
(null when the caller sent none), ``trace_id`` (32 hex digits, from the request's span or
else the caller's W3C ``traceparent``; null without either), ``latency_us`` (server side),
``status`` (``OK`` or the failure's gRPC status name), and per tensor of the version:
``input.<name>`` / ``output.<name>``, its bytes as the v2 protocol's raw contents carry
them (binary: little-endian values in row-major order; BYTES: a 4-byte little-endian
length and the bytes per element), the datatype in the field's metadata (``datatype``:
``FP32``..., ``numpy_dtype``: ``<f4``...), and ``input_shape.<name>`` /
``output_shape.<name>``, its shape (batch dimension included); both null where the
request failed before the tensor existed. ``tensors(table, column)`` gives the arrays
back; ``np.frombuffer(value, "<f4").reshape(shape)`` is all it does for numbers.

Per model (config.pbtxt ``parameters``): ``prediction_log_sample_ratio`` (0..1) replaces
the server's ratio; ``prediction_log_drop`` and ``prediction_log_hash`` name inputs
(comma-separated) that are left out, or stored only as ``input_blake2b.<name>``: the hex
BLAKE2b (64-byte digest) of the bytes that would have been stored,
``hashlib.blake2b(array.tobytes()).hexdigest()`` for a numeric tensor. A name that is
not an input of the version turns its logging off (a typo must not let personal data
through), with an error in the log.

Not logged: shadow runs and the steps of an ensemble (runs the server makes itself; the
ensemble's own request is logged).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from random import random
from urllib.parse import quote

import numpy as np

from tensorgate._ext.batcher import gather_bytes
from tensorgate._ext.rowpack import capture_bytes, row_layout
from tensorgate.observability.direct_write import DirectWriter

log = logging.getLogger("tensorgate.prediction_log")

RATIO_PARAMETER = "prediction_log_sample_ratio"
DROP_PARAMETER = "prediction_log_drop"
HASH_PARAMETER = "prediction_log_hash"

DRAIN_INTERVAL_S = 0.2  # how often the writer thread empties the queue
ROW_GROUP_BYTES = 16 << 20  # tensor data gathered before a Parquet row group is written
PAGE_BYTES = 1 << 20  # Parquet's data page size (its default)
ERROR_LOG_INTERVAL_S = 30.0  # at most one write-error line this often
_FILE_SLACK = 4 << 20  # a file's bytes beyond its tables' data: headers, levels, footer
_POLICY = "prediction_log_policy"  # the attribute a version carries once decided
_SCALARS = ("model", "version", "route", "variant", "request_id", "trace_id", "status")
_DICTIONARY = ["model", "version", "route", "variant", "status"]
_TENSOR_PREFIXES = ("input.", "output.")
_KEYS = itertools.count(1)

# A capture is a plain tuple of atoms, strings, ints and dicts of arrays. The dicts
# are not tracked by the garbage collector (arrays are not containers); the tuple is,
# since it holds dicts, but a collection visits only it, not what the Outcome held
# (its context and span: holding the Outcome made the event loop's collections
# measurably longer). Fields:
_KEY, _END_NS, _NS, _STATUS, _REQUEST_ID, _ROUTE, _VARIANT, _TRACE, _INPUTS, _OUTPUTS = range(10)


class Policy:
    """What is logged of one model version, decided once (its config's parameters)."""

    __slots__ = ("key", "model", "version", "ratio", "inputs", "outputs", "signature")

    def __init__(self, model: str, version: str, ratio: float, inputs: list,
                 outputs: list) -> None:
        self.key = next(_KEYS)  # what a capture carries (see PredictionLog.observe)
        self.model = model
        self.version = version
        self.ratio = ratio
        self.inputs = inputs  # [(name, (numpy dtype, v2 datatype), hashed)] of those kept
        self.outputs = outputs  # [(name, (numpy dtype, v2 datatype))]
        # Which columns its rows have: a file holds rows of one signature.
        self.signature = (
            tuple((n, str(d), h) for n, d, h in inputs), tuple((n, str(d)) for n, d in outputs)
        )


def _names(raw: str | None) -> list[str]:
    return [n.strip() for n in (raw or "").split(",") if n.strip()]


def policy_for(model, default_ratio: float) -> Policy | None:
    """``model``'s policy; None when none of its requests are logged (ratio 0, or a
    parameter in error: logged, and the version is left out rather than logged wrong)."""
    params = {k: v.string_value for k, v in model.config.parameters.items()}
    label = f"{model.name}:{model.version_str}"
    ratio = default_ratio
    raw = params.get(RATIO_PARAMETER)
    if raw is not None:
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            log.error("prediction log: %s: config.pbtxt parameters %s: expected a number "
                      "in 0..1, got %r; its requests are not logged", label, RATIO_PARAMETER,
                      raw)
            return None
    if ratio <= 0.0:
        return None
    drop, hashed = set(_names(params.get(DROP_PARAMETER))), set(_names(params.get(HASH_PARAMETER)))
    unknown = sorted((drop | hashed) - set(model.inputs))
    if unknown:
        log.error("prediction log: %s: config.pbtxt parameters %s/%s name %s, not an input "
                  "of the model (inputs: %s); its requests are not logged", label,
                  DROP_PARAMETER, HASH_PARAMETER, ", ".join(map(repr, unknown)),
                  ", ".join(model.inputs))
        return None
    inputs = [(s.name, (s.dtype.numpy, s.dtype.wire), s.name in hashed)
              for s in model.inputs.values() if s.name not in drop]
    outputs = [(s.name, (s.dtype.numpy, s.dtype.wire)) for s in model.outputs.values()]
    return Policy(model.name, model.version_str, ratio, inputs, outputs)


class PredictionLog:
    """The data plane observer (``observe``), a repository listener (decides each new
    version's policy at load, so a bad parameter shows in the log then) and the owner of
    the writer thread. ``close()`` writes what is buffered and stops the thread."""

    def __init__(
        self, directory: Path, ratio: float = 1.0, rotate_bytes: int = 64 << 20,
        rotate_secs: float = 60.0, buffer_size: int = 4096, repository=None,
    ) -> None:
        try:
            import pyarrow as pa
        except ImportError:
            raise RuntimeError(
                "--prediction-log-dir needs pyarrow: pip install 'tensorgate[logs]'"
            ) from None
        # pa.array's first call imports pandas (to recognise its objects): at start, not
        # in the writer while the server serves.
        pa.array([0])
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(
                f"--prediction-log-dir {str(self.directory)!r}: {exc.strerror or exc}"
            ) from None
        if not os.access(self.directory, os.W_OK | os.X_OK):
            raise RuntimeError(f"--prediction-log-dir {str(self.directory)!r} is not writable")
        self.ratio = ratio
        self.capacity = buffer_size
        self._repository = repository
        self._queue: collections.deque = collections.deque()
        # By key, one per version decided, kept for the server's life (a capture may
        # outlive its version's unload; a policy is a few hundred bytes).
        self.policies: dict[int, Policy] = {}
        # Counters: the first two are written on the loop, the others by the writer
        # thread; the metrics thread reads them all.
        self.captured = 0
        self.dropped_full = 0
        self.dropped_error = 0
        self.rows_written = self.bytes_written = self.files_written = 0
        self.rows_pending = 0  # in the writer's hands, not in a finished file yet
        self._writer = _Writer(self, rotate_bytes, rotate_secs)
        self._thread = threading.Thread(
            target=self._writer.run, name="prediction-log", daemon=True
        )
        self._thread.start()

    # -- on the event loop ---------------------------------------------------------------

    def observe(self, outcome) -> None:
        model = outcome.model
        try:
            policy = model.prediction_log_policy
        except AttributeError:
            policy = self.attach(model)
        if policy is None or outcome.shadow:
            return
        ratio = policy.ratio
        if ratio < 1.0 and random() >= ratio:
            return
        queue = self._queue
        if len(queue) >= self.capacity:
            self.dropped_full += 1
            return
        span = outcome.span
        if span is not None:
            trace = span.get_span_context().trace_id  # an int, formatted by the writer
        else:
            ctx = outcome.ctx
            trace = ctx.header("traceparent") if ctx is not None else None
        queue.append(capture(policy, outcome, time.time_ns(), trace))
        self.captured += 1

    def attach(self, model) -> Policy | None:
        policy = policy_for(model, self.ratio)
        if policy is not None:
            self.policies[policy.key] = policy
        setattr(model, _POLICY, policy)
        return policy

    async def __call__(self, event: str, name: str, **fields) -> None:
        if event == "loaded" and self._repository is not None:
            for model in self._repository.versions_of(name):
                if _POLICY not in vars(model):
                    self.attach(model)

    # -- shutdown ------------------------------------------------------------------------

    def close(self, timeout: float = 30.0) -> None:
        """Write everything buffered into finished files and stop the writer (blocks:
        call it off the event loop once no request can arrive any more)."""
        self._writer.stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("prediction log: the writer did not finish within %.0f s", timeout)

    @property
    def buffered(self) -> int:
        return len(self._queue) + self.rows_pending

    def collector(self) -> "PredictionLogCollector":
        return PredictionLogCollector(self)


# -- the writer thread ----------------------------------------------------------------------


class _Part:
    """One Parquet file being made, in a reused page-aligned mapping of ``capacity``
    bytes (direct_write), written out whole when finished under its temporary name,
    synced, then renamed. So an open file costs its size in memory, as the page cache
    would have held it anyway."""

    def __init__(self, folder: Path, name: str, schema, signature, date: str,
                 out: DirectWriter, capacity: int, row_bytes: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder.mkdir(parents=True, exist_ok=True)
        self.final = folder / name
        self.tmp = folder / f".{name}.tmp"
        self.signature = signature
        self.date = date
        self.opened = time.monotonic()
        self.rows = 0  # rows handed to this file (written or pending)
        self.pending: list = []
        self.pending_bytes = 0
        self.capacity = capacity
        self._out = out
        self._mapping = out.mapping(capacity)
        self.sink = pa.FixedSizeBufferWriter(pa.py_buffer(self._mapping))
        # Tensor bytes are written as they are: compressing them costs CPU per byte
        # (Snappy: a quarter more writer time per convnet row, measured) and gains little
        # on floats; the other columns are small and repetitive.
        compression = {n: "none" if n.startswith(_TENSOR_PREFIXES) else "snappy"
                       for n in schema.names}
        self.writer = pq.ParquetWriter(
            self.sink, schema, compression=compression,
            # Dictionaries and statistics pay off for the few repeated strings, not for
            # tensor bytes (whose dictionary attempts would be wasted CPU).
            use_dictionary=_DICTIONARY,
            write_statistics=["timestamp", "latency_us", *_SCALARS],
            # Parquet looks at a column's page size only after each write batch (1,024
            # values by default): 1,024 convnet inputs made one 48 MiB page, grown by
            # reallocation into fresh memory and copied out of cache. Batches of about
            # a page keep pages near PAGE_BYTES (server CPU per logged convnet request
            # 128 -> 110 us, bench.logging_cost).
            write_batch_size=max(1, min(1024, PAGE_BYTES // max(1, row_bytes))),
            data_page_size=PAGE_BYTES,
        )

    def add(self, table) -> None:
        self.pending.append(table)
        self.pending_bytes += table.nbytes
        self.rows += table.num_rows
        if self.pending_bytes >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            import pyarrow as pa

            self.writer.write_table(pa.concat_tables(self.pending))
            self.pending = []
            self.pending_bytes = 0

    @property
    def size(self) -> int:
        return self.sink.tell() + self.pending_bytes

    def finish(self) -> int:
        """Write the file, sync it and rename it; its size."""
        self.flush()
        self.writer.close()
        length = self.sink.tell()
        self._drop_views()
        try:
            self._out.write_file(self.tmp, self._mapping, length)
            os.replace(self.tmp, self.final)
        except BaseException:
            self._unlink()
            raise
        finally:
            self._out.release(self._mapping)
        return length

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:  # already broken: the file is being thrown away
            pass
        self._drop_views()
        self._out.release(self._mapping)
        self._unlink()

    def _drop_views(self) -> None:
        self.pending = []
        self.writer = self.sink = None  # their views of the mapping go with them

    def _unlink(self) -> None:
        try:
            self.tmp.unlink()
        except OSError:
            pass


def _folder_name(model: str) -> str:
    """A model name as one path component (repository names are directory names
    already; this only guards against the impossible)."""
    if model in ("", ".", "..") or "/" in model or "\0" in model:
        return "_" + quote(model, safe="")
    return model


class _Writer:
    def __init__(self, owner: PredictionLog, rotate_bytes: int, rotate_secs: float) -> None:
        self.owner = owner
        self.rotate_bytes = rotate_bytes
        self.rotate_secs = rotate_secs
        self.stop = threading.Event()
        self.parts: dict[str, _Part] = {}  # by model name
        self.out = DirectWriter()
        # A file ends once it holds rotate_bytes: it may take one more chunk past that.
        self.capacity = rotate_bytes + ROW_GROUP_BYTES + _FILE_SLACK
        self.run_token = os.urandom(4).hex()
        self.sequence = 0
        self.last_error = -1e9

    def run(self) -> None:
        queue = self.owner._queue
        while True:
            started = time.monotonic()
            stopping = self.stop.is_set()  # read before draining: the last drain sees all
            self._drain()
            if stopping:
                for model in list(self.parts):
                    self._finish(model)
                return
            now = time.monotonic()
            today = _today()
            for model, part in list(self.parts.items()):
                if now - part.opened >= self.rotate_secs or part.date != today:
                    self._finish(model)
            # One drain per interval, the next one at once when the queue filled to half
            # meanwhile (a slow pass, e.g. a file's fsync, must not turn into drops).
            if len(queue) < self.owner.capacity // 2:
                self.stop.wait(max(0.0, DRAIN_INTERVAL_S - (time.monotonic() - started)))

    def _drain(self) -> None:
        queue = self.owner._queue
        count = len(queue)
        if not count:
            return
        groups: dict[int, list] = {}
        popleft = queue.popleft
        for _ in range(count):
            capture = popleft()
            groups.setdefault(capture[_KEY], []).append(capture)
        self.owner.rows_pending += count
        for key, captures in groups.items():
            policy = self.owner.policies[key]
            try:
                chunks = list(_chunks(captures, min(ROW_GROUP_BYTES, self.rotate_bytes)))
            except Exception as exc:  # captures it cannot size: lost, the writer goes on
                self._failed(policy.model, len(captures), exc)
                continue
            for chunk in chunks:
                self._write(policy, chunk)

    def _write(self, policy: Policy, captures: list) -> None:
        model = policy.model
        try:
            table = to_table(policy, captures)
            # Room for its data, page headers and the footer: a file never outgrows
            # the mapping it is made in.
            need = table.nbytes + _FILE_SLACK
            part = self.parts.get(model)
            if part is not None and (part.signature != policy.signature
                                     or part.size + need > part.capacity):
                self._finish(model)  # other columns (a new version), or full
                part = None
            if part is None:
                part = self.parts[model] = self._open(
                    model, table.schema, policy.signature, max(self.capacity, need),
                    table.nbytes // max(1, table.num_rows),
                )
        except Exception as exc:  # nothing of this chunk reached a file
            self._failed(model, len(captures), exc)
            return
        try:
            part.add(table)
        except Exception as exc:  # the file is broken: its rows (this chunk's too) are lost
            self.parts.pop(model, None)
            part.discard()
            self._failed(model, part.rows, exc)
            return
        if part.size >= self.rotate_bytes:
            self._finish(model)

    def _open(self, model: str, schema, signature, capacity: int, row_bytes: int) -> _Part:
        self.sequence += 1
        now = time.gmtime()
        name = (f"part-{time.strftime('%H%M%S', now)}-{self.run_token}-"
                f"{self.sequence:04d}.parquet")
        date = time.strftime("%Y-%m-%d", now)
        folder = self.owner.directory / _folder_name(model) / date
        return _Part(folder, name, schema, signature, date, self.out, capacity, row_bytes)

    def _finish(self, model: str) -> None:
        part = self.parts.pop(model)
        try:
            size = part.finish()
        except Exception as exc:
            part.discard()
            self._failed(model, part.rows, exc)
            return
        owner = self.owner
        owner.rows_written += part.rows
        owner.bytes_written += size
        owner.files_written += 1
        owner.rows_pending -= part.rows

    def _failed(self, model: str, rows: int, exc: Exception) -> None:
        """A write failed (disk full, permissions...): ``rows`` are counted as dropped
        and the server goes on; the error is logged at most every ERROR_LOG_INTERVAL_S."""
        owner = self.owner
        owner.dropped_error += rows
        owner.rows_pending -= rows
        now = time.monotonic()
        if now - self.last_error >= ERROR_LOG_INTERVAL_S:
            self.last_error = now
            log.error("prediction log: writing %s's rows failed (%d row(s) lost): %s",
                      model, rows, exc)


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def _chunks(captures: list, limit: int):
    """``captures`` in slices of at most ``limit`` bytes of tensor data (or one capture):
    a file overshoots its rotation size by one slice at most, and every list column's
    int32 offsets stay far from overflowing."""
    ends = np.cumsum(capture_bytes(captures, (_INPUTS, _OUTPUTS)))
    start, count = 0, len(captures)
    while start < count:
        before = int(ends[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(ends, before + limit, side="right")))
        yield captures[start:end]
        start = end


# -- captures -> Arrow ------------------------------------------------------------------------


def trace_id(trace) -> str | None:
    """32 hex digits from a span's trace id (int) or a W3C traceparent header."""
    if trace is None:
        return None
    if isinstance(trace, int):
        return f"{trace:032x}" if trace else None
    parts = trace.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    value = parts[1].lower()
    try:
        valid = int(value, 16) != 0
    except ValueError:
        return None
    return value if valid else None


def raw_bytes(array: np.ndarray):
    """A tensor as the v2 protocol's raw contents: little-endian values in row-major
    order (BOOL one byte each), or for BYTES each element's 4-byte little-endian length
    and its bytes. What a log stores for it, and what its hash is computed over."""
    if array.dtype == object:
        from tensorgate._ext.codec import encode_bytes_tensor

        return encode_bytes_tensor(array)
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


def blake2b_hex(array: np.ndarray) -> str:
    """The hash stored for a hashed input: BLAKE2b (64-byte digest) of its raw bytes."""
    return hashlib.blake2b(raw_bytes(array)).hexdigest()


def _tensor_columns(arrays: list, dtype: np.dtype):
    """(data, shapes) for one tensor over the rows (None: a null row): binary raw bytes
    and list<int64> shapes. Binary, not a list of values: a list column costs Parquet a
    repetition and a definition level per element (measured: several times the CPU per
    row of a convnet input), a binary one a single value.

    This runs on the writer thread, but holding the GIL the event loop needs: the rows
    are laid out and copied natively (rowpack), with no Python per row for numbers."""
    import pyarrow as pa

    n = len(arrays)
    layout = row_layout(arrays, dtype)
    if layout is None:  # a row of another byte order, or a view: its bytes as stored
        arrays = [None if a is None else np.ascontiguousarray(a, dtype) for a in arrays]
        layout = row_layout(arrays, dtype)
    offsets, shape_offsets, dims, valid = layout
    data = arrays
    if dtype == object:
        # BYTES: the v2 serialization, each row's bytes sized by its contents.
        data = [None if a is None else np.frombuffer(raw_bytes(a), np.uint8) for a in arrays]
        offsets = row_layout(data, np.uint8)[0]
    # Arrow's allocator keeps freed memory for the next chunk; a fresh numpy array of
    # this size would be mapped anew each time (a page fault per 4 KiB, measured).
    buffer = pa.allocate_buffer(int(offsets[-1]))
    gather_bytes(data, np.frombuffer(buffer, np.uint8))
    bitmap = None if valid is None else pa.array(valid).buffers()[1]
    values = pa.BinaryArray.from_buffers(
        pa.binary(), n, [bitmap, pa.py_buffer(offsets), buffer]
    )
    shapes = pa.ListArray.from_arrays(
        pa.array(shape_offsets), pa.array(dims),
        mask=None if valid is None else pa.array(~valid),
    )
    return values, shapes


def _field(name: str, dtype: np.dtype, datatype: str):
    """A tensor's binary column, its datatype in the field's metadata."""
    import pyarrow as pa

    return pa.field(name, pa.binary(), metadata={
        "datatype": datatype, "numpy_dtype": "object" if dtype == object else dtype.str,
    })


def capture(policy: Policy, outcome, end_ns: int, trace=None, arrays=None) -> tuple:
    """What the queue holds of one request (see _KEY...): ``end_ns`` the wall clock
    (time.time_ns) when it was answered, ``trace`` a span's trace id or a traceparent,
    ``arrays`` its inputs when not ``outcome.arrays``."""
    return (
        policy.key, end_ns, outcome.ns, outcome.status, outcome.request_id, outcome.route,
        outcome.variant, trace, outcome.arrays if arrays is None else arrays, outcome.outputs,
    )


def to_table(policy: Policy, captures: list):
    """One Arrow table (a row per capture) from captures of one model version."""
    import pyarrow as pa

    n = len(captures)
    ends = np.fromiter((c[_END_NS] for c in captures), np.int64, n)
    ns = np.fromiter((c[_NS] for c in captures), np.int64, n)
    columns = {
        "timestamp": pa.array((ends - ns) // 1000, pa.timestamp("us", tz="UTC")),
        "model": pa.array([policy.model] * n, pa.string()),
        "version": pa.array([policy.version] * n, pa.string()),
        "route": pa.array([c[_ROUTE] for c in captures], pa.string()),
        "variant": pa.array([c[_VARIANT] for c in captures], pa.string()),
        "request_id": pa.array([c[_REQUEST_ID] or None for c in captures], pa.string()),
        "trace_id": pa.array([None if c[_TRACE] is None else trace_id(c[_TRACE])
                              for c in captures], pa.string()),
        "latency_us": pa.array(ns // 1000),
        "status": pa.array([c[_STATUS] for c in captures], pa.string()),
    }
    inputs = [c[_INPUTS] or {} for c in captures]
    fields = [pa.field(name, col.type) for name, col in columns.items()]
    arrays = list(columns.values())
    for name, datatype, hashed in policy.inputs:
        values = [a.get(name) for a in inputs]
        if hashed:
            fields.append(pa.field(f"input_blake2b.{name}", pa.string()))
            arrays.append(pa.array([None if a is None else blake2b_hex(a) for a in values],
                                   pa.string()))
        else:
            data, shapes = _tensor_columns(values, datatype[0])
            fields += [_field(f"input.{name}", *datatype),
                       pa.field(f"input_shape.{name}", shapes.type)]
            arrays += [data, shapes]
    outputs = [c[_OUTPUTS] or {} for c in captures]
    for name, datatype in policy.outputs:
        data, shapes = _tensor_columns([o.get(name) for o in outputs], datatype[0])
        fields += [_field(f"output.{name}", *datatype),
                   pa.field(f"output_shape.{name}", shapes.type)]
        arrays += [data, shapes]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def tensors(table, column: str) -> list:
    """The arrays of one tensor column of a logged table (``input.<name>`` or
    ``output.<name>``), each in its shape; None for a null row."""
    field = table.schema.field(column)
    dtype = field.metadata[b"numpy_dtype"].decode()
    kind, _, name = column.partition(".")
    shapes = table.column(f"{kind}_shape.{name}").to_pylist()
    out = []
    for value, shape in zip(table.column(column).to_pylist(), shapes):
        if value is None:
            out.append(None)
        elif dtype == "object":
            from tensorgate._ext.codec import decode_bytes_tensor

            count = int(np.prod(shape))
            out.append(decode_bytes_tensor(value, count).reshape(shape))
        else:
            out.append(np.frombuffer(value, dtype).reshape(shape))
    return out


# -- /metrics -------------------------------------------------------------------------------


class PredictionLogCollector:
    """The prediction log's counters, read at scrape time (metrics.serve_metrics)."""

    def __init__(self, owner: PredictionLog) -> None:
        self.owner = owner

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        o = self.owner
        yield CounterMetricFamily(
            "tensorgate_prediction_log_captured",
            "Requests sampled for the prediction log and buffered", value=o.captured)
        dropped = CounterMetricFamily(
            "tensorgate_prediction_log_dropped",
            "Sampled requests not logged: buffer_full (the writer fell behind; the "
            "request itself was served), write_error (a file could not be written)",
            labels=["reason"])
        dropped.add_metric(["buffer_full"], o.dropped_full)
        dropped.add_metric(["write_error"], o.dropped_error)
        yield dropped
        for name, doc, value in (
            ("tensorgate_prediction_log_rows_written", "Rows in finished prediction log "
             "files", o.rows_written),
            ("tensorgate_prediction_log_bytes_written", "Bytes of finished prediction log "
             "files", o.bytes_written),
            ("tensorgate_prediction_log_files_written", "Prediction log files finished",
             o.files_written),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "tensorgate_prediction_log_buffered_rows",
            "Captured rows not in a finished file yet (queued, or in the file being "
            "written)", value=o.buffered)
