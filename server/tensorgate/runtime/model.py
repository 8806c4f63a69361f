"""A loaded model version: its completed config, tensor specs, ONNX Runtime instances
and the batcher that feeds them.

Everything a request needs that can be computed once (specs, output names, batch
buffers, the scheduler's policy) is computed here at load.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from tensorgate._ext.batcher import QueuePolicy, Scheduler
from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.batching.batcher import Batcher, BatchTimings, Pending
from tensorgate.batching.varlen import VarLenPlan, check_padding_invariance, plan_from_config
from tensorgate.classification import read_labels
from tensorgate.dtypes import BY_CONFIG
from tensorgate.errors import DeadlineExceeded, ModelLoadError, RuntimeFailure
from tensorgate.observability import tracing as _tracing
from tensorgate.observability.stats import VersionStats
from tensorgate.repository import lineage
from tensorgate.repository.paths import ModelFiles
from tensorgate.repository.config import (
    ParsedConfig,
    complete_config,
    graph_tensors,
    _complete_instance_groups,
)
from tensorgate.runtime import gpu, version_tests
from tensorgate.runtime.session import (
    bool_param,
    create_session,
    instance_specs,
    register_op_libraries,
    session_options,
)
from tensorgate.tensors import TensorSpec

log = logging.getLogger("tensorgate.runtime")

# How long one sign of concurrent load counts for the idle flush and inline runs (see
# ModelVersion.alone). Signs: two requests in flight at once, or a request arriving
# less than BUSY_GAP_S after the previous one left. Inline runs finish before the next
# request is read, so under load they never overlap: the gap is what shows the load (a
# closed-loop client at concurrency 1 leaves ~300 µs of client round trip between
# requests; a loaded server reads the next request at once).
OVERLAP_MEMORY_S = 0.05
BUSY_GAP_S = 100e-6
# See ModelVersion.alone: batches in a row that waited alone before a request that only
# *looks* like load (by the gap) stops waiting, and how often it probes the window then.
LONE_WINDOWS = 3
PROBE_EVERY = 64

# A model whose batch-1 run (measured at load) takes at most this many µs runs on the
# event loop thread when a request finds it idle (nothing queued or running, no
# concurrent load lately). Measured on the 2-core reference machine: handing a request to
# a worker thread and back costs the loop ~150-200 µs of wall time and CPU (two thread
# wake-ups and GIL hand-offs; perf: a quarter of the server's CPU in task switches at
# concurrency 1), while the tiny MLP runs in 7 µs. Set by --inline-max-us; 0 turns it off.
INLINE_MAX_US = 100.0
WARM_UP_RUNS = 15

# Triton's test hook TRITONSERVER_DELAY_SCHEDULER=N (read by the app at start): each
# dynamic batcher holds its first requests until N are queued, so a test can queue
# several requests before any batch forms. 0: off.
DELAY_SCHEDULER_ENV = "TRITONSERVER_DELAY_SCHEDULER"
HOLD_UNTIL = 0

# Model version states, as RepositoryIndex reports them (Triton's names).
LOADING, READY, UNLOADING, UNAVAILABLE = "LOADING", "READY", "UNLOADING", "UNAVAILABLE"


def _tensor_specs(entries) -> dict[str, TensorSpec]:
    specs = {}
    for e in entries:
        dtype = BY_CONFIG[mc.DataType.Name(e.data_type)]
        dims = tuple(e.dims)
        model_dims = tuple(e.reshape.shape) if e.HasField("reshape") else None
        optional = bool(getattr(e, "optional", False))
        specs[e.name] = TensorSpec(e.name, dtype, dims, model_dims, optional)
    return specs


def _labels(config: mc.ModelConfig, files: ModelFiles) -> dict[str, list[str]]:
    """Each output's class labels from its label_filename (classification extension)."""
    labels = {}
    for out in config.output:
        if out.label_filename:
            path = files.labels(out.label_filename)
            try:
                labels[out.name] = read_labels(path)
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelLoadError(
                    f"output '{out.name}': label_filename {out.label_filename}: {exc}"
                ) from None
    return labels


def _queue_policy(p: mc.ModelQueuePolicy) -> QueuePolicy:
    return QueuePolicy(
        timeout_action="DELAY" if p.timeout_action == mc.ModelQueuePolicy.DELAY else "REJECT",
        default_timeout_us=p.default_timeout_microseconds,
        allow_timeout_override=p.allow_timeout_override,
        max_queue_size=p.max_queue_size,
    )


class ModelVersion:
    """One version of one model, from load to release."""

    def __init__(self, name: str, version: int, config: mc.ModelConfig, sessions: list) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.label = f"{name}:{version}"
        self.config = config
        self.max_batch_size = config.max_batch_size
        self.inputs = _tensor_specs(config.input)
        self.outputs = _tensor_specs(config.output)
        self.output_names = list(self.outputs)
        self.output_specs = list(self.outputs.values())
        self.devices = [device for _, device in sessions]
        self._sessions = [session for session, _ in sessions]
        self.stats = VersionStats()
        self.load_seconds = 0.0
        self.source_sig = None  # what it was loaded from (repository reuse on reload)
        self.state = LOADING
        self.inflight = 0
        self.run_us: float | None = None  # median batch-1 run time at load
        self.inline = False  # see INLINE_MAX_US
        self.last_overlap = -1e9  # time.monotonic() of the last sign of concurrent load
        # Batches in a row that waited out the window alone (see alone()), and requests
        # since the window was last probed.
        self.lone_windows = 0
        self._since_probe = 0
        self.last_leave = -1e9  # time.monotonic() when the last request left
        self._idle = asyncio.Event()
        self._idle.set()
        self.batcher: Batcher | None = None
        # Drift monitoring (observability/drift) when the version has a profile.
        self.drift_monitor = None
        self.labels: dict[str, list[str]] = {}  # output -> class labels (label_filename)
        self.varlen: VarLenPlan | None = None  # variable-length batching, when configured
        self.dynamic_batching = config.HasField("dynamic_batching") and self.max_batch_size > 0
        # TensorGate's one departure from Triton's batcher, on by default: a request that
        # finds the model idle (every other in-flight request already queued) is not held
        # for max_queue_delay. "false" restores Triton's strict window.
        flush = bool_param(
            {k: v.string_value for k, v in config.parameters.items()}, "batching_idle_flush"
        )
        self.idle_flush = flush is None or flush
        self._flush_on_leave = self.idle_flush and self.dynamic_batching
        self._windowed = (
            self._flush_on_leave and config.dynamic_batching.max_queue_delay_microseconds > 0
        )
        # A batch of one that queued this long waited its whole window in vain.
        self._lone_wait_ns = (
            0.9 * config.dynamic_batching.max_queue_delay_microseconds * 1000
            if self._windowed else float("inf")
        )
        self.priority_levels = (
            config.dynamic_batching.priority_levels if self.dynamic_batching else 0
        )

    # -- load ---------------------------------------------------------------------

    @classmethod
    def load(
        cls, name: str, version: int, files: ModelFiles, parsed: ParsedConfig,
        default_max_batch_size: int,
    ) -> "ModelVersion":
        """Build sessions and specs (blocking: call it off the event loop)."""
        started = time.monotonic()
        filename = parsed.config.default_model_filename or "model.onnx"
        path = files.model(version, filename)
        try:
            model_bytes = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"version {version}: cannot read {filename}: {exc.strerror}")
        groups = mc.ModelConfig()
        groups.CopyFrom(parsed.config)
        groups.name = name
        _complete_instance_groups(groups)
        opts = session_options(parsed.config)
        register_op_libraries(opts, parsed.config, files)  # custom ops, e.g. tokenizers
        acc = gpu.accelerators(groups, version)
        sessions = [
            create_session(model_bytes, opts, spec, f"{name}:{version}", acc)
            for spec in instance_specs(groups)
        ]
        first = sessions[0][0]
        config = complete_config(
            parsed, name, graph_tensors(first.get_inputs()), graph_tensors(first.get_outputs()),
            default_max_batch_size,
        )
        # Per-version provenance (registry, optimize) as ModelConfig parameters.
        lineage.apply(config, lineage.read_version(files, version))
        model = cls(name, version, config, sessions)
        model.labels = _labels(config, files)
        model.varlen = plan_from_config(
            config, model.inputs, model.outputs, first.get_inputs(), first.get_outputs()
        )
        if model.varlen is not None:
            names = model.output_names
            try:
                check_padding_invariance(
                    model.varlen, model.inputs,
                    lambda feed: dict(zip(names, first.run(names, feed))), model.label,
                )
            except ModelLoadError:
                raise
            except Exception as exc:  # onnxruntime refused the generated inputs
                raise ModelLoadError(
                    f"variable_length_batching: could not check that padding leaves the "
                    f"answers alone (generated inputs: {str(exc)[:300]})"
                ) from None
        if config.model_warmup:
            model._config_warm_up(files)  # raises ModelLoadError: never takes traffic
        model.run_us = model._warm_up()
        model._run_version_tests(files)  # raises ModelLoadError: never takes traffic
        model.inline = (
            model.run_us is not None
            and model.run_us <= INLINE_MAX_US
            # The warm-up ran variable dimensions at 1: a request's run time is bounded
            # by that measurement only when every input's shape is fixed (a 64-token
            # request to a text encoder takes ms, and would hold the event loop).
            and all(spec.fixed for spec in model.inputs.values())
            and model.devices[0] == "cpu"
            and not HOLD_UNTIL  # the test hook counts queued requests: queue them all
        )
        model.load_seconds = time.monotonic() - started
        log.info(
            "loaded %s in %.0f ms: %d instance(s) on %s, max_batch_size %d, dynamic batching %s,"
            " batch-1 run %s%s",
            model.label, (time.monotonic() - started) * 1000, len(sessions),
            ", ".join(model.devices), model.max_batch_size, "on" if model.dynamic_batching else "off",
            "n/a" if model.run_us is None else f"{model.run_us:.0f} us",
            " (runs inline when idle)" if model.inline else "",
        )
        return model

    def _run_version_tests(self, files: ModelFiles) -> None:
        """The version's own tests (``<version>/tests/tests.json``), on every instance."""
        manifest = version_tests.manifest_path(files, self.version)
        if not manifest.exists():
            return
        names = self.output_names
        for i, session in enumerate(self._sessions):
            def run(feed, session=session):
                try:
                    return dict(zip(names, session.run(names, feed)))
                except Exception as exc:  # onnxruntime's own types
                    raise ModelLoadError(
                        f"version tests: instance {i} failed to run: {str(exc)[:300]}"
                    ) from None
            version_tests.gate(self, manifest.parent, run)
        log.info("%s: version tests passed (%s)", self.label, manifest)

    def _config_warm_up(self, files: ModelFiles) -> None:
        """Run the config's ``model_warmup`` samples (Triton's semantics: zero_data,
        random_data, or input_data_file under <model>/warmup/) on every instance; any
        failure fails the load, so a version that cannot answer never takes traffic."""
        rng = np.random.default_rng(0)
        for sample in self.config.model_warmup:
            feed = {}
            for name, inp in sample.inputs.items():
                spec = self.inputs.get(name)
                if spec is None:
                    raise ModelLoadError(f"model_warmup '{sample.name}': unknown input '{name}'")
                dtype = BY_CONFIG[mc.DataType.Name(inp.data_type)]
                dims = tuple(inp.dims)
                shape = ((max(sample.batch_size, 1),) if self.max_batch_size > 0 else ()) + dims
                which = inp.WhichOneof("input_data_type")
                if dtype.wire == "BYTES":
                    value = np.full(shape, b"", dtype=object)
                elif which == "random_data":
                    value = rng.random(shape).astype(dtype.numpy)
                elif which == "input_data_file":
                    path = files.warmup(inp.input_data_file)
                    try:
                        raw = path.read_bytes()
                        value = np.frombuffer(raw, dtype.numpy).reshape(shape)
                    except (OSError, ValueError) as exc:
                        raise ModelLoadError(
                            f"model_warmup '{sample.name}': input '{name}' from {path}: {exc}"
                        ) from None
                else:
                    value = np.zeros(shape, dtype.numpy)
                if spec.model_dims is not None:
                    value = value.reshape(value.shape[: len(shape) - len(dims)] + spec.model_dims)
                feed[name] = value
            try:
                for session in self._sessions:
                    for _ in range(max(sample.count, 1)):
                        session.run(self.output_names, feed)
            except Exception as exc:  # onnxruntime's own types
                raise ModelLoadError(
                    f"model_warmup '{sample.name}' failed: {str(exc)[:300]}"
                ) from None
        log.info("%s: %d model_warmup sample(s) ran", self.label, len(self.config.model_warmup))

    def _warm_up(self) -> float | None:
        """Run every instance on generated batch-1 inputs (zeros; dynamic dims as 1) so
        the first request doesn't pay for lazy initialisation; the median run time of
        the first instance in µs, or None when the model refuses generated inputs."""
        feed = {}
        for name, spec in self.inputs.items():
            dims = tuple(1 if d < 0 else d for d in (spec.model_dims or spec.dims))
            shape = ((1,) if self.max_batch_size > 0 else ()) + dims
            if spec.dtype.wire == "BYTES":
                feed[name] = np.full(shape, "", dtype=object)
            else:
                feed[name] = np.zeros(shape, spec.dtype.numpy)
        times = []
        try:
            for session in self._sessions:
                session.run(self.output_names, feed)
            for _ in range(WARM_UP_RUNS):
                t0 = time.perf_counter_ns()
                self._sessions[0].run(self.output_names, feed)
                times.append((time.perf_counter_ns() - t0) / 1000)
        except Exception as exc:  # onnxruntime's own types; generated data may be invalid
            log.info("%s: no warm-up on generated inputs (%s)", self.label, str(exc)[:200])
            return None
        return sorted(times)[len(times) // 2]

    async def run(
        self, arrays: dict[str, np.ndarray], rows: int, shape_key, priority: int = 0,
        timeout_us: int = 0, deadline: float = 0.0, span=None, now: float = 0.0,
        inline_ok: bool = True,
    ) -> dict[str, np.ndarray]:
        """Run one validated request (entered at ``now``); its outputs by name.

        Inline on the calling (event loop) thread when the model is idle and its run
        is shorter than a thread hand-off (see INLINE_MAX_US), else through the
        batcher. ``inline_ok=False`` (shadow runs): always through the batcher."""
        if self.varlen is not None:  # batched by length bucket, not by exact shape
            shape_key = self.varlen.shape_key(arrays)
        alone = self.alone(now)
        if inline_ok and alone and self.inline and self.inflight == 1 and not priority:
            if deadline and time.monotonic() > deadline:
                raise DeadlineExceeded(f"model {self.label}: the deadline passed")
            if self._windowed:  # these rows went ahead of their batching window
                self.batcher.note_early(rows, shape_key, now)
            t0 = time.perf_counter_ns()
            try:
                values = self._sessions[0].run(self.output_names, arrays)
            except Exception as exc:  # onnxruntime's own exception types
                raise RuntimeFailure(f"onnxruntime failed: {exc}") from None
            t1 = time.perf_counter_ns()
            self.stats.record_batch(rows, 0, t1 - t0, 0)
            self.stats.record_request(0, 0, t1 - t0, 0)
            tracing = _tracing.ACTIVE
            if span is not None and tracing is not None:
                tracing.record_inline(self, span, rows, t0, t1)
            outputs = dict(zip(self.output_names, values))
            monitor = self.drift_monitor
            if monitor is not None:  # batches reach it through the batcher's tap
                monitor.inline(arrays, outputs)
            return outputs
        pending = await self.batcher.submit(
            arrays, rows, shape_key, priority, timeout_us, deadline, alone, span
        )
        return pending.outputs

    def _scheduler(self) -> Scheduler:
        if not self.dynamic_batching:
            return Scheduler(max(self.max_batch_size, 1), batching=False)
        db = self.config.dynamic_batching
        return Scheduler(
            self.max_batch_size,
            preferred_batch_sizes=tuple(db.preferred_batch_size),
            max_queue_delay_us=db.max_queue_delay_microseconds,
            priority_levels=db.priority_levels,
            default_priority_level=db.default_priority_level,
            default_policy=_queue_policy(db.default_queue_policy),
            priority_policies={k: _queue_policy(v) for k, v in db.priority_queue_policy.items()},
            hold_until=HOLD_UNTIL,
            group_by_shape=self.varlen is not None,  # one length bucket per batch
        )

    def _batch_buffers(self, runner=None) -> dict[str, np.ndarray]:
        """Per-instance batch buffers for fixed-shape inputs, sized max_batch_size;
        page-locked for a runner that copies them to a GPU (gpu.BoundRunner)."""
        if not self.dynamic_batching:
            return {}
        buffers = {}
        for name, spec in self.inputs.items():
            if not spec.fixed or spec.dtype.wire == "BYTES":
                continue
            shape = (self.max_batch_size,) + (spec.model_dims or spec.dims)
            if getattr(runner, "pinned", False):
                buffers[name], why = gpu.pinned_empty(shape, spec.dtype.numpy)
                if why is not None:
                    log.warning("%s: batch buffer for %s is not page-locked (%s): copies to "
                                "the GPU go through the driver's staging buffer",
                                self.label, name, why)
            else:
                buffers[name] = np.empty(shape, spec.dtype.numpy)
        return buffers

    def runners(self) -> list:
        """One callable per instance, feed -> outputs in ``output_names`` order: IO
        binding with page-locked batch buffers on a GPU, ``session.run`` on the CPU."""
        names = self.output_names
        runners = []
        for session, device in zip(self._sessions, self.devices):
            if device.startswith("cuda:"):
                runners.append(gpu.BoundRunner(session, names, "cuda", int(device[5:]),
                                               pinned=True))
            else:
                runners.append(lambda feed, s=session: s.run(names, feed))
        return runners

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        names = self.output_names
        runners = self.runners()
        self.batcher = Batcher(
            self.label, self._scheduler(), runners, names, self._batch_buffers, loop,
            self._record_batch, self.varlen,
        )
        self.batcher.start()
        self.state = READY

    def _record_batch(self, batch: list[Pending], timings: BatchTimings) -> None:
        if len(batch) == 1 and batch[0].queue_ns >= self._lone_wait_ns:
            self.lone_windows += 1  # it waited the window and nothing joined it
        else:
            self.lone_windows = 0
        stats = self.stats
        if timings.rows:
            stats.record_batch(timings.rows, timings.input_ns, timings.infer_ns, timings.output_ns)
            if timings.padded_elements:
                stats.varlen_real_elements += timings.real_elements
                stats.varlen_padded_elements += timings.padded_elements
        for p in batch:
            if p.error is None:
                stats.record_request(p.queue_ns, p.input_ns, p.infer_ns, p.output_ns)
        tracing = _tracing.ACTIVE
        if tracing is not None:
            tracing.record_batch(self, batch, timings)

    # -- serving ------------------------------------------------------------------

    def enter(self, now: float) -> None:
        self.inflight += 1
        if self.inflight > 1:
            self.last_overlap = now
            self.lone_windows = 0  # two at once: real concurrency
        elif now - self.last_leave < BUSY_GAP_S:
            self.last_overlap = now
        self._idle.clear()

    def alone(self, now: float) -> bool:
        """Whether a request entering now should not wait out the batching delay.

        True when every other in-flight request is already queued (nothing is on its way
        to the queue) and no two requests have overlapped lately: a closed-loop client
        at concurrency 1 then gets an immediate dispatch, while under concurrent load,
        where more requests sit unseen in the transport, batches fill for the window.

        A request that follows the previous one within BUSY_GAP_S looks like load too,
        but so does a fast client at concurrency 1 (wrk sends the next request within
        microseconds). When only that gap says "load" and LONE_WINDOWS batches in a row
        waited the window with nothing joining them, waiting is not buying batches: the
        request goes at once, and every PROBE_EVERY-th one waits the window again, so
        that load which does come fills a batch and turns waiting back on.
        """
        if not self.idle_flush or self.inflight - 1 != self.batcher.queued:
            return False
        if now - self.last_overlap > OVERLAP_MEMORY_S:
            return True
        if self.lone_windows >= LONE_WINDOWS:
            self._since_probe += 1
            return self._since_probe % PROBE_EVERY != 0
        return False

    def leave(self) -> None:
        self.inflight -= 1
        self.last_leave = time.monotonic()
        if self.inflight == 0:
            self._idle.set()
        elif self._flush_on_leave and self.inflight == self.batcher.queued:
            # Every request still in flight is queued: none runs and none is on its way
            # to the queue, so waiting out the delay could only add latency. What queued
            # during the batch that just ended goes now, as one batch where it can.
            self.batcher.flush()

    async def drain_and_release(self, timeout: float) -> None:
        """Wait for in-flight requests (new ones are no longer routed here), then stop."""
        self.state = UNLOADING
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%s: %d request(s) still in flight after %.0f s; releasing anyway",
                        self.label, self.inflight, timeout)
        if self.batcher is not None:
            await asyncio.to_thread(self.batcher.close)
        self._sessions.clear()
        self.state = UNAVAILABLE
        log.info("released %s", self.label)
