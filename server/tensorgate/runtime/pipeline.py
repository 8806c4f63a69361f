"""Pipelines: Triton's ensembles, a graph of repository models run inside the server.

A model whose config.pbtxt says ``platform: "ensemble"`` has no model file; its
``ensemble_scheduling`` steps name repository models and map tensors between them::

    step [ { model_name: "tokenizer" model_version: -1
             input_map { key: "TEXT" value: "TEXT" }          # step input <- tensor
             output_map { key: "input_ids" value: "ids" } },  # step output -> tensor
           { model_name: "encoder" ... } ]

A request's tensors flow from step to step without a client round trip. Each step
runs on its model's own queue and batcher (so steps batch with that model's other
traffic), is counted in that model's statistics, and is resolved at request time, so
a step's new version serves at once. Steps whose inputs are ready run concurrently.

Checked at load, each failure naming the step and the tensor: every step's model is
loaded; its inputs are all mapped and its outputs exist; every tensor a step reads is
an ensemble input or another step's output, of the same datatype and compatible
dimensions; the ensemble's outputs are all produced and its inputs all used; no step
waits on itself; batching agrees (an ensemble that batches needs steps that batch at
least as large; an ensemble that does not batch may run steps that do: a tensor's
first dimension is then their batch). At request time a step that fails answers with
the step's name.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.errors import InvalidArgument, ModelLoadError, RuntimeFailure, TensorGateError
from tensorgate.repository.config import ParsedConfig, _complete_instance_groups
from tensorgate.runtime.model import READY, UNAVAILABLE, UNLOADING, ModelVersion

log = logging.getLogger("tensorgate.runtime")

PLATFORM = "ensemble"


def is_pipeline(config: mc.ModelConfig) -> bool:
    return config.platform == PLATFORM


def complete_pipeline_config(parsed: ParsedConfig, name: str) -> mc.ModelConfig:
    """An ensemble's config as served: nothing to fill in from a graph, so its inputs
    and outputs must be declared; what an ensemble cannot have is refused by name."""
    config = mc.ModelConfig()
    config.CopyFrom(parsed.config)
    if config.name and config.name != name:
        raise ModelLoadError(
            f"config.pbtxt name '{config.name}' does not match the model directory '{name}'"
        )
    config.name = name
    if config.backend:
        raise ModelLoadError(f"config.pbtxt backend '{config.backend}': an ensemble has none")
    if not config.ensemble_scheduling.step:
        raise ModelLoadError("config.pbtxt ensemble_scheduling: an ensemble needs steps")
    for field in ("dynamic_batching", "sequence_batching"):
        if config.HasField(field):
            raise ModelLoadError(
                f"config.pbtxt {field}: an ensemble does not batch; its steps' models do"
            )
    if config.max_batch_size < 0:
        raise ModelLoadError(f"config.pbtxt max_batch_size {config.max_batch_size} is negative")
    for kind, entries in (("input", config.input), ("output", config.output)):
        if not entries:
            raise ModelLoadError(f"config.pbtxt: an ensemble must declare its {kind}s")
        for e in entries:
            if not e.dims and config.max_batch_size == 0:
                raise ModelLoadError(f"config.pbtxt {kind} '{e.name}': dims are required")
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    _complete_instance_groups(config)
    return config


def _compatible(want: tuple, got: tuple) -> bool:
    return len(want) == len(got) and all(a == -1 or b == -1 or a == b for a, b in zip(want, got))


class Step:
    __slots__ = ("index", "model", "version", "input_map", "output_map", "label")

    def __init__(self, index: int, step) -> None:
        self.index = index
        self.model = step.model_name
        self.version = str(step.model_version) if step.model_version > 0 else ""
        self.input_map = dict(step.input_map)  # step input -> ensemble tensor
        self.output_map = dict(step.output_map)  # step output -> ensemble tensor
        self.label = f"step {index} ('{step.model_name}')"


def plan_steps(config: mc.ModelConfig, resolve) -> list[list[Step]]:
    """The steps in waves (each wave's inputs are ready once the waves before it ran),
    checked against the loaded models ``resolve(name, version)`` returns."""
    steps = [Step(i, s) for i, s in enumerate(config.ensemble_scheduling.step)]
    batching = config.max_batch_size > 0
    # tensor -> (dtype, dims, who makes it, whether dims leave out a batch dimension)
    tensors: dict[str, tuple] = {
        e.name: (mc.DataType.Name(e.data_type), tuple(e.dims), "ensemble input", batching)
        for e in config.input
    }
    models = {}
    for step in steps:
        if step.model == config.name:
            raise ModelLoadError(f"ensemble {step.label}: an ensemble cannot run itself")
        try:
            model = resolve(step.model, step.version)
        except TensorGateError as exc:
            raise ModelLoadError(f"ensemble {step.label}: {exc.message}") from None
        if isinstance(model, PipelineVersion):
            raise ModelLoadError(
                f"ensemble {step.label}: is an ensemble; steps are ONNX models"
            )
        models[step.index] = model
        if batching and not 0 < config.max_batch_size <= model.max_batch_size:
            raise ModelLoadError(
                f"ensemble {step.label}: max_batch_size {model.max_batch_size} is less than "
                f"the ensemble's {config.max_batch_size} (a step must take every batch)"
            )
        for name in step.input_map:
            if name not in model.inputs:
                raise ModelLoadError(
                    f"ensemble {step.label}: input_map names '{name}', not an input of "
                    f"'{step.model}' (its inputs: {', '.join(model.inputs)})"
                )
        for name, spec in model.inputs.items():
            if name not in step.input_map and not spec.optional:
                raise ModelLoadError(
                    f"ensemble {step.label}: input '{name}' of '{step.model}' is not in its "
                    "input_map"
                )
        for name, tensor in step.output_map.items():
            spec = model.outputs.get(name)
            if spec is None:
                raise ModelLoadError(
                    f"ensemble {step.label}: output_map names '{name}', not an output of "
                    f"'{step.model}' (its outputs: {', '.join(model.outputs)})"
                )
            if tensor in tensors:
                raise ModelLoadError(
                    f"ensemble {step.label}: tensor '{tensor}' is made twice (also by "
                    f"{tensors[tensor][2]})"
                )
            tensors[tensor] = (spec.dtype.config, spec.dims, step.label,
                               model.max_batch_size > 0)
    waves: list[list[Step]] = []
    ready = {e.name for e in config.input}
    left = list(steps)
    while left:
        wave = [s for s in left if all(t in ready for t in s.input_map.values())]
        if not wave:
            step = left[0]
            missing = sorted(t for t in step.input_map.values() if t not in ready)
            known = [t for t in missing if t in tensors]
            raise ModelLoadError(
                f"ensemble {step.label}: "
                + (f"waits on itself through {', '.join(known)} (a cycle)" if known else
                   f"reads {', '.join(missing)}, which neither an ensemble input nor a "
                   "step's output_map makes")
            )
        for step in wave:
            model = models[step.index]
            for name, tensor in step.input_map.items():
                dtype, dims, maker, batched = tensors[tensor]
                if model.max_batch_size > 0 and not batched:
                    dims = dims[1:]  # its first dimension is this step's batch
                elif batched and model.max_batch_size == 0:
                    raise ModelLoadError(
                        f"ensemble {step.label}: '{step.model}' does not batch, but tensor "
                        f"'{tensor}' from {maker} comes in batches"
                    )
                spec = model.inputs[name]
                want = spec.dtype.config
                if dtype != want:
                    raise ModelLoadError(
                        f"ensemble {step.label}: input '{name}' is {want}, but tensor "
                        f"'{tensor}' from {maker} is {dtype}"
                    )
                if dims and not _compatible(spec.dims, dims):
                    raise ModelLoadError(
                        f"ensemble {step.label}: input '{name}' has dims {list(spec.dims)}, "
                        f"but tensor '{tensor}' from {maker} has {list(dims)}"
                    )
            ready.update(step.output_map.values())
        waves.append(wave)
        left = [s for s in left if s not in wave]
    used = {t for s in steps for t in s.input_map.values()}
    for e in config.input:
        if e.name not in used:
            raise ModelLoadError(f"ensemble input '{e.name}' is read by no step")
    for e in config.output:
        made = tensors.get(e.name)
        if made is None or made[2] == "ensemble input":
            raise ModelLoadError(f"ensemble output '{e.name}' is made by no step's output_map")
        dtype = mc.DataType.Name(e.data_type)
        if made[0] != dtype:
            raise ModelLoadError(
                f"ensemble output '{e.name}' is {dtype}, but {made[2]} makes it {made[0]}"
            )
    return waves


class PipelineVersion(ModelVersion):
    """One version of an ensemble: the data plane runs it like any model version."""

    # Set by the app: runs validated arrays on a model version and records it there
    # (DataPlane.run_prepared); and the repository's resolve(name, version).
    run_step = None
    resolve = None

    def __init__(self, name: str, version: int, config: mc.ModelConfig) -> None:
        super().__init__(name, version, config, [])
        self.devices = ["pipeline"]
        self.waves = plan_steps(config, type(self).resolve)

    @classmethod
    def load(cls, name, version, files, parsed, default_max_batch_size) -> "PipelineVersion":
        config = complete_pipeline_config(parsed, name)
        model = cls(name, version, config)
        log.info("loaded %s: ensemble of %d step(s) in %d wave(s): %s", model.label,
                 sum(len(w) for w in model.waves), len(model.waves),
                 " -> ".join("+".join(s.model for s in wave) for wave in model.waves))
        return model

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.state = READY

    def alone(self, now: float) -> bool:
        return False

    async def run(self, arrays, rows, shape_key, priority=0, timeout_us=0, deadline=0.0,
                  span=None, now=0.0, inline_ok=True) -> dict[str, np.ndarray]:
        pool = dict(arrays)
        for wave in self.waves:
            results = await asyncio.gather(
                *(self._run_step(step, pool, deadline) for step in wave),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return {name: pool[name] for name in self.output_names}

    async def _run_step(self, step: Step, pool: dict, deadline: float) -> None:
        try:
            model = type(self).resolve(step.model, step.version)
            batching = model.max_batch_size > 0
            rows = -1
            feed = {}
            for name, tensor in step.input_map.items():
                value = pool[tensor]
                spec = model.inputs[name]
                if value.dtype != spec.dtype.numpy and spec.dtype.wire != "BYTES":
                    raise InvalidArgument(
                        f"input '{name}' is {spec.dtype.wire}, tensor '{tensor}' is "
                        f"{value.dtype}"
                    )
                body = value.shape[1:] if batching else value.shape
                if batching:  # a step's batch is its inputs' first dimension
                    if rows not in (-1, value.shape[0]):
                        raise InvalidArgument(
                            f"input '{name}' has batch size {value.shape[0]}, the inputs "
                            f"before it {rows}"
                        )
                    rows = value.shape[0]
                if not _compatible(spec.dims, tuple(body)):
                    raise InvalidArgument(
                        f"input '{name}' expects dims {list(spec.dims)}, tensor '{tensor}' "
                        f"has {list(body)}"
                    )
                feed[name] = value
            variable = not all(model.inputs[n].fixed for n in feed)
            key = tuple(a.shape[1:] for a in feed.values()) if variable else None
            if batching and not 1 <= rows <= model.max_batch_size:
                raise InvalidArgument(
                    f"batch size {rows} is not in 1..{model.max_batch_size} of "
                    f"'{step.model}'"
                )
            outputs = await type(self).run_step(model, feed, max(rows, 1), key, deadline)
        except asyncio.CancelledError:
            raise
        except TensorGateError as exc:
            raise type(exc)(f"ensemble '{self.name}' {step.label}: {exc.message}") from None
        except Exception as exc:
            raise RuntimeFailure(f"ensemble '{self.name}' {step.label}: {exc}") from None
        for name, tensor in step.output_map.items():
            pool[tensor] = outputs[name]

    async def drain_and_release(self, timeout: float) -> None:
        self.state = UNLOADING
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%s: %d request(s) still in flight after %.0f s; releasing anyway",
                        self.label, self.inflight, timeout)
        self.state = UNAVAILABLE
        log.info("released %s", self.label)
