"""One batch job: load the model version as the server does, then read, convert, run and
write chunks, overlapped, with a manifest that lets a killed run continue.

The model version is loaded by ``ModelRepository`` from the same repository, so it has
the same completed config, session options, instances, warm-up and variable-length
plan as when served, and its requests go through the same dynamic batcher and worker
threads (one per instance). The event loop only submits requests and books results:
reading and converting a chunk, and turning its answers into a Parquet part, run in
worker threads, while up to ``2 x instances`` requests are in flight, so every instance
has its next batch queued while it runs one, and the next chunk is read meanwhile.
Memory is bounded: at most two chunks in the model and one being read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tensorgate.batch import sources
from tensorgate.batch.common import BatchError, atomic_write_bytes
from tensorgate.batch.grouping import Call, assemble, plan_calls
from tensorgate.batch.manifest import Manifest
from tensorgate.batch.mapping import Plan, parse_maps
from tensorgate.batch.outputs import output_type, to_arrow
from tensorgate.batch.writer import Layout
from tensorgate.errors import InvalidArgument, ResourceExhausted, RuntimeFailure, TensorGateError

log = logging.getLogger("tensorgate.batch")

CHUNK_BYTES = 32 << 20  # input bytes per chunk the default chunk size aims at
MAX_CHUNK_ROWS = 16384
MAX_VARLEN_CHUNK_ROWS = 2048  # text rows are cheap to read and slow to run
VARIABLE_LENGTH_GUESS = 64  # elements assumed for a variable dimension when sizing chunks
CHUNKS_IN_FLIGHT = 3  # chunks in the model or being written
READ_AHEAD = 2  # chunks read and converted, waiting for the model


@dataclass
class Job:
    """What ``tensorgate batch`` was asked to do (see cli.py for each option)."""

    repository: Path
    inputs: str
    output: Path
    model: str | None = None
    version: str = ""
    route: str | None = None
    state_dir: Path | None = None
    input_format: str = "auto"
    maps: list[str] = field(default_factory=list)
    passthrough: list[str] | None = None
    batch_size: int | None = None
    chunk_rows: int | None = None
    errors: Path | None = None
    summary: Path | None = None
    overwrite: bool = False
    progress: bool = False
    default_max_batch_size: int = 4


# -- the model ---------------------------------------------------------------------------


def route_target(repository: Path, state_dir: Path | None, route: str) -> tuple[str, str]:
    """(model, version) of a saved route's primary target (its heaviest, as the server's
    RouteManager.primary): from ``<state_dir or repository/.tensorgate>/routes.json``."""
    from tensorgate.routing import store

    path = (Path(state_dir) / store.STATE_FILE) if state_dir else store.state_path(repository)
    try:
        routes = store.load(path)
    except ValueError as exc:
        raise BatchError(f"--route {route}: {exc}") from None
    for r in routes:
        if r.name == route:
            if not r.targets:
                raise BatchError(f"--route {route}: the route has no targets")
            target = max(r.targets, key=lambda t: t.weight)
            return target.model, target.version
    names = ", ".join(sorted(r.name for r in routes)) or "none"
    raise BatchError(f"unknown route '{route}' (routes saved in {path}: {names})")


async def open_model(job: Job):
    """(repository, model version), loaded exactly as ``tensorgate serve`` loads it."""
    from tensorgate.repository.config import parse_config
    from tensorgate.repository.manager import ModelRepository
    from tensorgate.runtime.pipeline import PipelineVersion, is_pipeline

    root = Path(job.repository)
    if not root.is_dir():
        raise BatchError(f"--model-repository {root}: no such directory")
    name, version = job.model, job.version
    if job.route:
        name_r, version_r = route_target(root, job.state_dir, job.route)
        if name and name != name_r:
            raise BatchError(f"--route {job.route} serves model '{name_r}', not --model {name}")
        name, version = name_r, version_r or version
    repo = ModelRepository(root, job.default_max_batch_size, drain_timeout=30.0)
    known = repo.paths.model_dirs()
    if name not in known:
        raise BatchError(f"unknown model '{name}' in {root} (models: "
                         f"{', '.join(sorted(known)) or 'none'})")
    names = [name]
    files = repo.paths.model_files(known[name])
    try:
        config = parse_config(files.config()).config
    except Exception as exc:  # its own load reports it with the same words
        config = None
        log.debug("config of %s: %s", name, exc)
    if config is not None and is_pipeline(config):
        steps = [s.model_name for s in config.ensemble_scheduling.step]
        names = list(dict.fromkeys(steps)) + [name]

        async def run_step(model, feed, rows, key, deadline):
            return await _run_once(model, feed, rows, key)
        PipelineVersion.run_step = staticmethod(run_step)
        PipelineVersion.resolve = repo.resolve
    loop = asyncio.get_running_loop()
    for n in names:
        failed = await repo.load_some(loop, [n])
        if failed:
            raise BatchError(f"cannot load {failed[0]}")
    try:
        model = repo.resolve(name, version)
    except TensorGateError as exc:
        raise BatchError(exc.message + (
            " (batch runs the versions the model's version_policy serves, as `serve` "
            "would)" if version else "")) from None
    return repo, model


async def _run_once(model, arrays, rows, key):
    """One request through the version's batcher, booked like a served request."""
    while True:
        now = time.monotonic()
        model.enter(now)
        try:
            return await model.run(arrays, rows, key, now=now)
        except ResourceExhausted:  # the model's max_queue_size: wait for room
            await asyncio.sleep(0.005)
        finally:
            model.leave()


# -- sizes -------------------------------------------------------------------------------


def default_batch_size(model) -> int:
    if model.max_batch_size <= 0:
        return 1
    preferred = [p for p in model.config.dynamic_batching.preferred_batch_size
                 if 0 < p <= model.max_batch_size] if model.dynamic_batching else []
    return max(preferred) if preferred else model.max_batch_size


def batch_size_for(model, requested: int | None) -> int:
    """Rows per request: as asked, at most the model's max_batch_size."""
    if model.max_batch_size <= 0:
        return 1
    size = requested or default_batch_size(model)
    if size > model.max_batch_size:
        log.warning("--batch-size %d is above %s's max_batch_size %d: requests take %d rows",
                    size, model.label, model.max_batch_size, model.max_batch_size)
        size = model.max_batch_size
    return size


def default_chunk_rows(plan: Plan) -> int:
    row_bytes = 0
    variable = False
    for m in plan.inputs.values():
        item = 64 if m.spec.dtype.wire == "BYTES" else np.dtype(m.spec.dtype.numpy).itemsize
        elements = m.elements * (VARIABLE_LENGTH_GUESS if m.variable else 1)
        variable |= m.variable
        row_bytes += max(1, elements) * item
    rows = max(64, min(MAX_VARLEN_CHUNK_ROWS if variable else MAX_CHUNK_ROWS,
                       CHUNK_BYTES // max(row_bytes, 1)))
    return 1 << (rows.bit_length() - 1)  # a power of two


def _model_signature(model) -> str:
    return hashlib.sha256(repr(model.source_sig).encode()).hexdigest()[:16]


# -- the run ---------------------------------------------------------------------------


@dataclass
class Result:
    summary: dict
    failed: int


class _Progress:
    """A rich progress bar (rows, rows/s, ETA) when asked for; otherwise nothing."""

    def __init__(self, enabled: bool, total: int | None, done: int) -> None:
        self._bar = None
        if not enabled:
            return
        try:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
        except ImportError:
            log.warning("no progress bar: rich is not installed (pip install 'tensorgate[batch]')")
            return
        self._bar = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("rows"), TextColumn("{task.fields[rate]} rows/s"),
                             TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
        self._task = self._bar.add_task("rows", total=total, completed=done, rate="-")
        self._start = time.monotonic()
        self._rows = 0
        self._bar.start()

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def advance(self, rows: int) -> None:
        if self._bar is None:
            return
        self._rows += rows
        rate = self._rows / max(time.monotonic() - self._start, 1e-9)
        self._bar.update(self._task, advance=rows, rate=f"{rate:,.0f}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


async def run(job: Job) -> Result:
    started = time.monotonic()
    files = sources.list_inputs(job.inputs, job.input_format)
    schema = sources.read_schema(files[0])
    maps = parse_maps(job.maps)
    repo, model = await open_model(job)
    from tensorgate.runtime.heap import freeze

    # As the server does after a load: the modules and the model's objects, alive for
    # the whole run, are moved out of the cyclic collector's sight. (Measured on
    # convnet, 8,000 rows: one full collection either way, so no change in CPU per row.)
    freeze()
    try:
        return await _run_loaded(job, files, schema, maps, model, started)
    finally:
        await repo.unload_all()


async def _run_loaded(job: Job, files, schema, maps, model, started: float) -> Result:
    plan = Plan.build(model.inputs, model.output_names, model.max_batch_size, schema, maps,
                      job.passthrough)
    for f in files[1:]:
        other = sources.read_schema(f)
        missing = [c for c in plan.read_columns if c not in other.names]
        if missing:
            raise BatchError(f"{f.path}: no column {', '.join(repr(c) for c in missing)} "
                             f"(the first file, {files[0].path.name}, has it)")
    batch_size = batch_size_for(model, job.batch_size)
    layout = Layout(job.output, job.errors, job.summary)
    previous = None if job.overwrite else _previous_chunk_rows(layout)
    chunk_rows = job.chunk_rows or previous or default_chunk_rows(plan)
    read_schema = pa.schema([schema.field(c) for c in plan.read_columns])
    out_schema = pa.schema(
        [read_schema.field(c) for c in plan.passthrough]
        + [pa.field(n, output_type(model.outputs[n])) for n in model.output_names])
    fingerprint = {
        "model": model.label, "model_files": _model_signature(model),
        "inputs": [f.identity() for f in files], "map": sorted(job.maps),
        "passthrough": plan.passthrough, "chunk_rows": chunk_rows,
        "output": "file" if layout.single else "directory",
    }
    finished = None if job.overwrite else layout.finished_summary()
    if finished is not None:
        if finished.get("fingerprint") != fingerprint:
            raise BatchError(f"--output {layout.output} exists (from another run); "
                             "--overwrite to replace it")
        log.info("%s is complete already", layout.output)
        return Result(finished, int(finished.get("rows_failed", 0)))
    layout.prepare(job.overwrite)
    manifest = Manifest.open(layout.manifest, fingerprint)
    if manifest.merged:  # finished before; at most its clean-up was cut short
        await asyncio.to_thread(_finish, layout, manifest, out_schema, {})
        done = json.loads(layout.summary.read_text(encoding="utf-8"))
        return Result(done, int(done.get("rows_failed", 0)))
    resumed_rows = sum(manifest.totals())
    await asyncio.to_thread(manifest.save)  # the output is this job's from now on
    counts = [sources.row_count(f) for f in files]
    total = sum(counts) if all(c is not None for c in counts) else None
    progress = _Progress(job.progress, total, resumed_rows)
    if job.progress and total is None:  # CSV, JSON Lines: count their lines meanwhile
        loop = asyncio.get_running_loop()

        def count():
            n = sum(c if c is not None else sources.count_lines(f) for c, f in zip(counts, files))
            loop.call_soon_threadsafe(progress.set_total, n)
        threading.Thread(target=count, name="tensorgate-batch-count", daemon=True).start()
    runner = _ChunkRunner(model, plan, batch_size, layout, manifest, files, out_schema)
    runner.read_schema = read_schema
    t0, cpu0 = time.monotonic(), time.process_time()
    try:
        if not manifest.complete:
            await runner.run_all(progress)
            manifest.complete = True
            await asyncio.to_thread(manifest.save)
    finally:
        progress.stop()
    seconds, cpu = time.monotonic() - t0, time.process_time() - cpu0
    ok, failed = manifest.totals()
    summary = {
        "model": model.name, "version": model.version_str, "route": job.route,
        "inputs": [str(f.path) for f in files], "output": str(layout.output),
        "rows": ok + failed, "rows_ok": ok, "rows_failed": failed,
        "errors_file": str(layout.errors) if failed else None,
        "rows_this_run": runner.rows_done, "rows_resumed": resumed_rows,
        "seconds": round(seconds, 3), "seconds_with_load": round(time.monotonic() - started, 3),
        "cpu_seconds": round(cpu, 3),  # of every thread of the process, while it ran
        "rows_per_s": round(runner.rows_done / seconds, 1) if seconds > 0 else None,
        "batch_size": batch_size, "chunk_rows": chunk_rows,
        "instances": len(model.devices), "fingerprint": fingerprint,
    }
    await asyncio.to_thread(_finish, layout, manifest, out_schema, summary)
    return Result(summary, failed)


def _previous_chunk_rows(layout: Layout) -> int | None:
    """The chunk size of the run being resumed (a resumed run must keep it)."""
    try:
        state = json.loads(layout.manifest.read_text(encoding="utf-8"))
        return int(state["fingerprint"]["chunk_rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finish(layout: Layout, manifest: Manifest, schema: pa.Schema, summary: dict) -> None:
    """Errors file, single-file merge and summary, then the manifest says ``merged``;
    after that only the clean-up is left (a rerun redoes just that)."""
    if not manifest.merged:
        layout.merge_errors()
        if layout.single:
            layout.merge_parts(schema)
        layout.summary.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(layout.summary, (json.dumps(summary, indent=2) + "\n").encode())
        manifest.merged = True
        manifest.save()
    if layout.single:
        layout.cleanup()
    else:
        layout.drop_error_parts()


class _ChunkRunner:
    def __init__(self, model, plan: Plan, batch_size: int, layout: Layout,
                 manifest: Manifest, files, out_schema: pa.Schema) -> None:
        self.model, self.plan, self.batch_size = model, plan, batch_size
        self.layout, self.manifest, self.files = layout, manifest, files
        self.out_schema = out_schema
        self.read_schema: pa.Schema | None = None
        self.calls = asyncio.Semaphore(max(2, 2 * len(model.devices)))
        self.chunks = asyncio.Semaphore(CHUNKS_IN_FLIGHT)
        self.book = asyncio.Lock()
        self._finished: list[tuple[int, int, int, int]] = []
        self.rows_done = 0

    def _pending(self):
        """(file index, chunk index, table) of every chunk not done yet (blocking)."""
        chunk_rows = self.manifest.fingerprint["chunk_rows"]
        for fi, f in enumerate(self.files):
            skip = self.manifest.done_chunks(fi)
            # CSV and JSON Lines files are read with the first file's column types, so
            # every part has one schema.
            for ci, table in sources.chunks(f, chunk_rows, self.read_schema,
                                            self.plan.read_columns, skip):
                if table is not None:
                    yield fi, ci, table

    def _prepare(self, table: pa.Table):
        conv = self.plan.convert(table)
        calls, rejects = plan_calls(conv, self.model, self.batch_size)
        return conv, calls, rejects

    def _read_ahead(self, loop, queue: asyncio.Queue, stop: threading.Event) -> None:
        """Reader thread: read and convert chunks ahead of the model, READ_AHEAD at most
        waiting; ends with (None, error or None)."""
        end = None
        try:
            for fi, ci, table in self._pending():
                if stop.is_set():
                    break
                item = (fi, ci, table, self._prepare(table))
                asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
        except BaseException as exc:  # handed to the loop, raised there
            end = exc
        try:
            asyncio.run_coroutine_threadsafe(queue.put((None, end)), loop).result()
        except RuntimeError:  # the loop is gone: the run ended without waiting for us
            pass

    async def run_all(self, progress: _Progress) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue(READ_AHEAD)
        stop = threading.Event()
        reader = threading.Thread(target=self._read_ahead, args=(loop, queue, stop),
                                  name="tensorgate-batch-reader", daemon=True)
        reader.start()
        tasks: set[asyncio.Task] = set()
        failure: list[BaseException] = []
        try:
            while not failure:
                item = await queue.get()
                if item[0] is None:
                    if item[1] is not None:
                        raise item[1]
                    break
                fi, ci, table, prepared = item
                await self.chunks.acquire()
                if failure:
                    self.chunks.release()
                    break
                task = asyncio.create_task(self._chunk(fi, ci, table, prepared, progress))
                tasks.add(task)

                def done(t, tasks=tasks):
                    tasks.discard(t)
                    self.chunks.release()
                    if not t.cancelled() and t.exception() is not None:
                        failure.append(t.exception())
                task.add_done_callback(done)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            while not queue.empty():  # unblock the reader if it waits to put
                queue.get_nowait()
        if failure:
            raise failure[0]

    async def _chunk(self, fi: int, ci: int, table: pa.Table, prepared, progress) -> None:
        conv, calls, rejects = prepared
        done_calls, outputs, failed_rows = await run_calls(self.model, calls, self.calls)
        entry = await asyncio.to_thread(self._build, fi, ci, table, conv, rejects,
                                        done_calls, outputs, failed_rows)
        ok, failed = entry
        self.rows_done += ok + failed
        progress.advance(ok + failed)
        self._finished.append((fi, ci, ok, failed))
        await self._save()

    async def _save(self) -> None:
        """Record finished chunks in the manifest: one save at a time, each taking all
        chunks finished by then (a chunk whose part is written but not yet recorded is
        just run again after a crash)."""
        if self.book.locked():
            return  # the save running now, or the one after it, takes these chunks
        async with self.book:
            while self._finished:
                batch, self._finished = self._finished, []
                for fi, ci, ok, failed in batch:
                    self.manifest.record(fi, ci, ok, failed)
                await asyncio.to_thread(self._sync_and_save)

    def _sync_and_save(self) -> None:
        self.layout.sync()
        self.manifest.save()

    def _build(self, fi, ci, table, conv, rejects, calls, outputs, failed_rows):
        """The chunk's part table and error records (worker thread); commits them."""
        ok_rows = np.flatnonzero(conv.ok)  # chunk rows of the converted rows
        names = self.model.output_names
        bad_pos = {i: r for i, r in rejects}
        bad_pos.update({i: r for i, r in failed_rows})
        keep = np.ones(len(ok_rows), bool)
        keep[list(bad_pos)] = False
        columns = assemble(calls, outputs, names, self.model, int(keep.sum()))
        rows = ok_rows[keep]
        part = None
        if len(rows):
            passed = table.select(self.plan.passthrough).take(pa.array(rows))
            arrays = list(passed.columns) + [to_arrow(self.model.outputs[n], columns[n])
                                             for n in names]
            part = pa.Table.from_arrays(arrays, schema=None, names=self.out_schema.names)
            part = part.cast(self.out_schema)
        chunk_rows = self.manifest.fingerprint["chunk_rows"]
        base = ci * chunk_rows
        path = str(self.files[fi].path)
        errors = [{"row_id": base + r, "file": path, "reason": reason} for r, reason in conv.errors]
        errors += [{"row_id": base + int(ok_rows[i]), "file": path, "reason": reason}
                   for i, reason in sorted(bad_pos.items())]
        errors.sort(key=lambda e: e["row_id"])
        self.layout.commit(fi, ci, part, errors)
        return len(rows), len(errors)


async def run_calls(model, calls: list[Call], limit: asyncio.Semaphore | None = None):
    """Run a chunk's requests (at most ``limit`` at once): (the requests as run, their
    outputs or None, [(row, reason)] of the rows that failed). A request that fails is
    split in halves until the rows that fail are alone, so one bad row fails only
    itself."""
    if limit is None:
        limit = asyncio.Semaphore(max(2, 2 * len(model.devices)))

    async def one(call: Call) -> list:
        async with limit:
            try:
                return [(call, await _run_once(model, call.arrays, call.rows,
                                               call.shape_key), None)]
            except (RuntimeFailure, InvalidArgument) as exc:
                if call.rows == 1:
                    return [(call, None, exc.message)]
        half = call.rows // 2
        parts = await asyncio.gather(one(_slice_call(call, 0, half)),
                                     one(_slice_call(call, half, call.rows)))
        return parts[0] + parts[1]

    results = await asyncio.gather(*(one(c) for c in calls))
    done, outputs, failed = [], [], []
    for pieces in results:
        for call, result, reason in pieces:
            done.append(call)
            outputs.append(result)
            if result is None:
                failed += [(int(i), reason) for i in call.index]
    return done, outputs, failed


def _slice_call(call: Call, start: int, stop: int) -> Call:
    return Call(call.index[start:stop], {k: v[start:stop] for k, v in call.arrays.items()},
                stop - start, None if call.lengths is None else call.lengths[start:stop],
                call.shape_key)
