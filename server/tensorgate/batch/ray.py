"""Scale-out on Ray Data: a ``map_batches`` class that runs a TensorGate model version.

``TensorGatePredictor`` loads the version once per actor, with ``ModelRepository`` as
the server does (same config, session options, instances, batcher), on an event loop
in a thread of the actor, and turns each Arrow batch into output rows exactly as the
single-process run does (the same column mapping, request grouping and output
columns). Rows that cannot be converted or run are left out of the result and, when
``errors_dir`` is given (a path every node can write: shared storage on a multi-node
cluster), written there as JSON Lines with the reason and the row's passthrough values.

    import ray
    from tensorgate.batch.ray import TensorGatePredictor

    ds = ray.data.read_parquet("s3://bucket/table/")
    out = ds.map_batches(
        TensorGatePredictor, batch_format="pyarrow", batch_size=4096, concurrency=8,
        fn_constructor_kwargs={"repository": "/models", "model": "encoder"})
    out.write_parquet("s3://bucket/embeddings/")

``tensorgate batch --ray [ADDRESS]`` builds that pipeline from its own arguments. Ray is
an optional extra: ``pip install 'tensorgate[ray]'``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from tensorgate.batch.common import BatchError

READERS = {"parquet": "read_parquet", "csv": "read_csv", "jsonl": "read_json", "npy": "read_numpy"}


class TensorGatePredictor:
    """A Ray Data ``map_batches`` callable class (``batch_format="pyarrow"``)."""

    def __init__(self, repository: str, model: str, version: str = "",
                 maps: list[str] | None = None, passthrough: list[str] | None = None,
                 batch_size: int | None = None, errors_dir: str | None = None,
                 default_max_batch_size: int = 4) -> None:
        from tensorgate.batch.runner import Job

        self._job = Job(repository=Path(repository), inputs="", output=Path("."),
                        model=model, version=version, maps=list(maps or []),
                        passthrough=passthrough, batch_size=batch_size,
                        default_max_batch_size=default_max_batch_size)
        self._errors_dir = Path(errors_dir) if errors_dir else None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tensorgate-batch",
                                        daemon=True)
        self._thread.start()
        self._repo, self._model = self._wait(self._open())
        self._plans: dict = {}
        from tensorgate.runtime.heap import freeze

        freeze()  # as runner.run: long-lived objects out of the collector's sight

    async def _open(self):
        from tensorgate.batch.runner import open_model

        return await open_model(self._job)

    def _wait(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _plan(self, schema: pa.Schema):
        from tensorgate.batch.mapping import Plan, parse_maps

        key = schema.to_string()
        plan = self._plans.get(key)
        if plan is None:
            model = self._model
            plan = Plan.build(model.inputs, model.output_names, model.max_batch_size, schema,
                              parse_maps(self._job.maps), self._job.passthrough)
            self._plans[key] = plan
        return plan

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tensorgate.batch.grouping import assemble, plan_calls
        from tensorgate.batch.outputs import output_type, to_arrow
        from tensorgate.batch.runner import batch_size_for, run_calls

        model = self._model
        plan = self._plan(batch.schema)
        conv = plan.convert(batch)
        calls, rejects = plan_calls(conv, model, batch_size_for(model, self._job.batch_size))
        done, outputs, failed = self._wait(run_calls(model, calls))
        ok_rows = np.flatnonzero(conv.ok)
        bad = dict(rejects)
        bad.update(failed)
        keep = np.ones(len(ok_rows), bool)
        keep[list(bad)] = False
        columns = assemble(done, outputs, model.output_names, model, int(keep.sum()))
        rows = ok_rows[keep]
        errors = conv.errors + [(int(ok_rows[i]), r) for i, r in bad.items()]
        if errors and self._errors_dir is not None:
            self._write_errors(batch, plan.passthrough, errors)
        passed = batch.select(plan.passthrough).take(pa.array(rows, pa.int64()))
        names = list(plan.passthrough) + model.output_names
        arrays = list(passed.columns) + [to_arrow(model.outputs[n], columns[n])
                                         for n in model.output_names]
        schema = pa.schema([passed.schema.field(c) for c in plan.passthrough]
                           + [pa.field(n, output_type(model.outputs[n]))
                              for n in model.output_names])
        return pa.Table.from_arrays(arrays, names=names).cast(schema)

    def _write_errors(self, batch: pa.Table, passthrough, errors) -> None:
        scalar = [c for c in passthrough if not pa.types.is_nested(batch.schema.field(c).type)]
        values = batch.select(scalar).take(pa.array([r for r, _ in errors], pa.int64())).to_pylist()
        lines = "".join(json.dumps({"reason": reason, "row": row}, default=str,
                                   ensure_ascii=False) + "\n"
                        for (_, reason), row in zip(errors, values))
        self._errors_dir.mkdir(parents=True, exist_ok=True)
        path = self._errors_dir / f"errors-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
        tmp = path.with_name("." + path.name + ".tmp")
        tmp.write_text(lines, encoding="utf-8")
        os.replace(tmp, path)

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)


def run_on_ray(job, address: str, actors: int | None):
    """``tensorgate batch --ray``: the same job over a Ray Dataset; returns a runner
    Result. Checks the job on the driver first (model, mapping), like a local run."""
    try:
        import ray
    except ImportError:
        raise BatchError("--ray needs Ray Data: pip install 'tensorgate[ray]'") from None
    from tensorgate.batch import sources
    from tensorgate.batch.mapping import Plan, parse_maps
    from tensorgate.batch.runner import Result, open_model
    from tensorgate.batch.common import atomic_write
    from tensorgate.batch.writer import Layout
    import pyarrow.parquet as pq

    started = time.monotonic()
    files = sources.list_inputs(job.inputs, job.input_format)
    fmt = files[0].format
    if fmt not in READERS:
        raise BatchError(f"--ray reads {', '.join(READERS)} files, not {fmt}")
    schema = sources.read_schema(files[0])
    maps = parse_maps(job.maps)

    async def check():
        repo, model = await open_model(job)
        try:
            plan = Plan.build(model.inputs, model.output_names, model.max_batch_size, schema,
                              maps, job.passthrough)
            return model.name, model.version_str, len(model.devices), plan
        finally:
            await repo.unload_all()
    name, version, instances, plan = asyncio.run(check())
    layout = Layout(job.output, job.errors, job.summary)
    if layout.output.exists() and not job.overwrite:
        raise BatchError(f"--output {layout.output} exists; --ray runs do not resume: give "
                         "--overwrite or a new --output")
    layout.prepare(True)
    import logging

    quiet = logging.getLogger("tensorgate.batch").getEffectiveLevel() > logging.INFO
    if quiet:
        logging.getLogger("ray").setLevel(logging.WARNING)
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = job.progress
        if quiet:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        if actors is None:
            # A quarter of the CPUs stays free for Ray's read and write tasks: actors
            # holding every CPU would leave nothing to feed them.
            cpus = int(ray.cluster_resources().get("CPU", 1))
            actors = max(1, (cpus * 3 // 4) // max(instances, 1))
        paths = [str(f.path) for f in files]
        ds = getattr(ray.data, READERS[fmt])(paths)
        if plan.read_columns and fmt != "npy":
            ds = ds.select_columns(plan.read_columns)
        error_parts = layout.error_parts
        out = ds.map_batches(
            TensorGatePredictor, batch_format="pyarrow", batch_size=job.chunk_rows or 4096,
            concurrency=actors, num_cpus=instances,
            fn_constructor_kwargs={
                "repository": str(job.repository), "model": name, "version": version,
                "maps": job.maps, "passthrough": job.passthrough,
                "batch_size": job.batch_size, "errors_dir": str(error_parts),
                "default_max_batch_size": job.default_max_batch_size,
            })
        # The driver writes the parts: Ray 2.60's write_parquet loses the order of the
        # actors' batches inside one file even with preserve_order set (seen in CI:
        # rows 2560.. before 2048..), while iterating the dataset keeps it.
        written = []
        for chunk, table in enumerate(out.iter_batches(batch_format="pyarrow",
                                                       batch_size=None, prefetch_batches=2)):
            if table.num_rows:
                written.append(layout.part(0, chunk))
                atomic_write(written[-1], lambda f, t=table: pq.write_table(t, f))
    finally:
        ray.shutdown()

    rows_ok = sum(pq.ParquetFile(p).metadata.num_rows for p in written)
    failed = layout.merge_errors()
    if layout.single:
        out_schema = pq.read_schema(written[0]) if written else None
        if out_schema is not None:
            def write(f):
                with pq.ParquetWriter(f, out_schema) as w:
                    for p in written:
                        w.write_table(pq.read_table(p).cast(out_schema))
            atomic_write(layout.output, write)
        shutil.rmtree(layout.work)
    else:
        layout.drop_error_parts()
    seconds = time.monotonic() - started
    summary = {
        "model": name, "version": version, "route": job.route, "ray": address,
        "ray_actors": actors, "inputs": paths, "output": str(layout.output),
        "rows": rows_ok + failed, "rows_ok": rows_ok, "rows_failed": failed,
        "errors_file": str(layout.errors) if failed else None,
        "rows_this_run": rows_ok + failed, "rows_resumed": 0,
        "seconds": round(seconds, 3),
        "rows_per_s": round((rows_ok + failed) / seconds, 1) if seconds > 0 else None,
    }
    from tensorgate.batch.common import atomic_write_bytes

    layout.summary.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(layout.summary, (json.dumps(summary, indent=2) + "\n").encode())
    return Result(summary, failed)
