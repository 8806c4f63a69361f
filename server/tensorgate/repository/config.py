"""config.pbtxt: parse as text-format ``inference.ModelConfig``, complete it from the ONNX
graph, and reject a config that contradicts the graph, naming the field.

The result of :func:`complete_config` is what ModelConfig and ModelMetadata answer and
what the runtime builds its per-version specs from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.dtypes import BY_CONFIG, BY_ONNX
from tensorgate.errors import ModelLoadError

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
DEFAULT_FILENAME = "model.onnx"
_MAX_BATCH_RE = re.compile(r"^\s*max_batch_size\s*:", re.M)


@dataclass(frozen=True)
class GraphTensor:
    """One graph input or output as ONNX Runtime reports it."""

    name: str
    onnx_type: str  # e.g. "tensor(float)"
    shape: tuple[int, ...]  # -1 for symbolic/unknown dimensions


@dataclass
class ParsedConfig:
    config: mc.ModelConfig
    max_batch_size_given: bool  # proto3 cannot tell "absent" from 0; the text can


def parse_config(path: Path) -> ParsedConfig:
    """Read a model's ``config.pbtxt`` if present; an empty config otherwise."""
    config = mc.ModelConfig()
    if not path.exists():
        return ParsedConfig(config, False)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"config.pbtxt: cannot read: {exc}") from None
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelLoadError(f"config.pbtxt: {exc}") from None
    return ParsedConfig(config, bool(_MAX_BATCH_RE.search(text)))


def graph_tensors(nodes: Sequence) -> list[GraphTensor]:
    """Convert onnxruntime NodeArgs (``session.get_inputs()``) to GraphTensors."""
    out = []
    for node in nodes:
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or ()))
        out.append(GraphTensor(node.name, node.type, shape))
    return out


def _config_type_name(value: int) -> str:
    return mc.DataType.Name(value)


def _graph_type(t: GraphTensor, kind: str) -> int:
    dtype = BY_ONNX.get(t.onnx_type)
    if dtype is None:
        raise ModelLoadError(
            f"ONNX graph {kind} '{t.name}' has type {t.onnx_type}, which TensorGate cannot serve"
        )
    return mc.DataType.Value(dtype.config)


def _supports_batching(inputs: list[GraphTensor], outputs: list[GraphTensor]) -> bool:
    return all(len(t.shape) >= 1 and t.shape[0] == -1 for t in inputs + outputs)


def _check_dims(kind: str, entry, graph: GraphTensor, max_batch_size: int) -> None:
    """Config dims (plus the batch dimension, after reshape) must fit the graph's shape."""
    declared = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
    full = ([-1] if max_batch_size > 0 else []) + declared
    if max_batch_size > 0 and (not graph.shape or graph.shape[0] != -1):
        raise ModelLoadError(
            f"config.pbtxt max_batch_size {max_batch_size}: {kind} '{entry.name}' has shape "
            f"{list(graph.shape)} in the ONNX graph, without a dynamic first (batch) dimension"
        )
    if len(full) != len(graph.shape) or any(
        c != -1 and g != -1 and c != g for c, g in zip(full, graph.shape)
    ):
        field = "reshape" if entry.HasField("reshape") else "dims"
        raise ModelLoadError(
            f"config.pbtxt {kind} '{entry.name}' {field}: {declared} (with max_batch_size "
            f"{max_batch_size}: {full}) does not match the ONNX graph's shape {list(graph.shape)}"
        )


def _complete_tensors(kind, entries, graph: list[GraphTensor], max_batch_size: int, new_entry):
    by_name = {t.name: t for t in graph}
    seen = set()
    for entry in entries:
        if entry.name in seen:
            raise ModelLoadError(f"config.pbtxt {kind} '{entry.name}' is declared twice")
        seen.add(entry.name)
        g = by_name.get(entry.name)
        if g is None:
            names = ", ".join(t.name for t in graph)
            raise ModelLoadError(
                f"config.pbtxt {kind} '{entry.name}': the ONNX graph has no {kind} of that name "
                f"(its {kind}s: {names})"
            )
        expected = _graph_type(g, kind)
        if entry.data_type == mc.TYPE_INVALID:
            entry.data_type = expected
        elif entry.data_type != expected:
            raise ModelLoadError(
                f"config.pbtxt {kind} '{entry.name}' data_type: {_config_type_name(entry.data_type)}"
                f", but the ONNX graph declares {_config_type_name(expected)}"
            )
        if not entry.dims and not entry.HasField("reshape"):
            dims = g.shape[1:] if max_batch_size > 0 else g.shape
            entry.dims.extend(dims)
        _check_dims(kind, entry, g, max_batch_size)
    for g in graph:
        if g.name not in seen:
            entry = new_entry()
            entry.name = g.name
            entry.data_type = _graph_type(g, kind)
            entry.dims.extend(g.shape[1:] if max_batch_size > 0 else g.shape)
            _check_dims(kind, entry, g, max_batch_size)


def complete_config(
    parsed: ParsedConfig,
    model_name: str,
    inputs: list[GraphTensor],
    outputs: list[GraphTensor],
    default_max_batch_size: int,
) -> mc.ModelConfig:
    """Fill what the config leaves out from the graph; raise ModelLoadError on contradictions."""
    config = mc.ModelConfig()
    config.CopyFrom(parsed.config)
    if config.name and config.name != model_name:
        raise ModelLoadError(
            f"config.pbtxt name '{config.name}' does not match the model directory '{model_name}'"
        )
    config.name = model_name
    if config.platform and config.platform != PLATFORM:
        raise ModelLoadError(
            f"config.pbtxt platform '{config.platform}': TensorGate serves only '{PLATFORM}'"
        )
    if config.backend and config.backend != BACKEND:
        raise ModelLoadError(
            f"config.pbtxt backend '{config.backend}': TensorGate serves only '{BACKEND}'"
        )
    config.platform, config.backend = PLATFORM, BACKEND
    _check_unsupported(config)
    if config.max_batch_size < 0:
        raise ModelLoadError(f"config.pbtxt max_batch_size {config.max_batch_size} is negative")
    if not parsed.max_batch_size_given and _supports_batching(inputs, outputs):
        # Triton's auto-complete: a graph that can batch gets the default size and the
        # dynamic batcher, unless the config said otherwise.
        has_declared_full_shapes = any(
            len(e.dims) == len(g.shape)
            for e in config.input
            for g in inputs
            if e.name == g.name and e.dims
        )
        if not has_declared_full_shapes:
            config.max_batch_size = default_max_batch_size
            if not config.HasField("dynamic_batching") and not config.HasField(
                "sequence_batching"
            ):
                config.dynamic_batching.SetInParent()
    mbs = config.max_batch_size
    _complete_tensors("input", config.input, inputs, mbs, config.input.add)
    _complete_tensors("output", config.output, outputs, mbs, config.output.add)
    _check_batching(config)
    _complete_instance_groups(config)
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_FILENAME
    return config


# Whether the server has a response cache (--cache-size > 0); set by the app at start.
RESPONSE_CACHE = False


def _check_unsupported(config: mc.ModelConfig) -> None:
    """Config features TensorGate does not implement refuse the model, naming the field:
    a model that seems to load but ignores part of its config is worse than one that
    does not load."""
    if config.response_cache.enable and not RESPONSE_CACHE:
        raise ModelLoadError(
            "config.pbtxt response_cache { enable: true }: the server has no response "
            "cache; start it with --cache-size BYTES (e.g. 64M; Triton's --cache-config "
            "local,size=N works too), or remove the field to serve the model without one"
        )
    from tensorgate.runtime.gpu import accelerators

    accelerators(config, 0)  # refuses what it does not run, naming the field
    if config.model_transaction_policy.decoupled:
        raise ModelLoadError(
            "config.pbtxt model_transaction_policy { decoupled: true }: TensorGate answers "
            "every request with exactly one response; decoupled models are not supported"
        )
    if config.batch_input or config.batch_output:
        field = "batch_input" if config.batch_input else "batch_output"
        raise ModelLoadError(f"config.pbtxt {field}: not supported by TensorGate")
    for kind, entries in (("input", config.input), ("output", config.output)):
        for entry in entries:
            for field, fix in (("allow_ragged_batch", "variable_length_batching pads "
                                "similar lengths instead (README: Variable-length batching)"),
                               ("is_shape_tensor", "shape tensors are a TensorRT notion"),
                               ("is_non_linear_format_io", "a TensorRT notion")):
                if getattr(entry, field, False):
                    raise ModelLoadError(
                        f"config.pbtxt {kind} '{entry.name}' {field}: not supported by "
                        f"TensorGate ({fix})"
                    )
    if config.model_repository_agents.agents:
        raise ModelLoadError(
            "config.pbtxt model_repository_agents: repository agents are not supported by "
            "TensorGate"
        )


def _check_batching(config: mc.ModelConfig) -> None:
    if config.HasField("sequence_batching"):
        raise ModelLoadError("config.pbtxt sequence_batching: not supported by TensorGate yet")
    if config.HasField("ensemble_scheduling"):
        raise ModelLoadError("config.pbtxt ensemble_scheduling: not supported by TensorGate")
    if not config.HasField("dynamic_batching"):
        return
    db = config.dynamic_batching
    mbs = config.max_batch_size
    if mbs == 0:
        raise ModelLoadError(
            "config.pbtxt dynamic_batching: requires max_batch_size > 0 (the model does not batch)"
        )
    for size in db.preferred_batch_size:
        if not 1 <= size <= mbs:
            raise ModelLoadError(
                f"config.pbtxt dynamic_batching.preferred_batch_size {size}: must be in 1..{mbs}"
            )
    if db.priority_levels:
        if not 1 <= db.default_priority_level <= db.priority_levels:
            raise ModelLoadError(
                f"config.pbtxt dynamic_batching.default_priority_level {db.default_priority_level}:"
                f" must be in 1..{db.priority_levels} (priority_levels)"
            )
        for level in db.priority_queue_policy:
            if not 1 <= level <= db.priority_levels:
                raise ModelLoadError(
                    f"config.pbtxt dynamic_batching.priority_queue_policy key {level}: must be in"
                    f" 1..{db.priority_levels} (priority_levels)"
                )
    elif db.priority_queue_policy:
        raise ModelLoadError(
            "config.pbtxt dynamic_batching.priority_queue_policy: needs priority_levels > 0"
        )


def _complete_instance_groups(config: mc.ModelConfig) -> None:
    if not config.instance_group:
        group = config.instance_group.add()
        group.kind = mc.ModelInstanceGroup.KIND_AUTO
    for i, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{i}"
        if group.count < 0:
            raise ModelLoadError(f"config.pbtxt instance_group[{i}].count {group.count} is negative")
        if group.count == 0:
            group.count = 1
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL:
            raise ModelLoadError(f"config.pbtxt instance_group[{i}].kind KIND_MODEL: not supported")


def input_dtype(entry) -> str:
    """The v2 wire datatype of a config input/output entry."""
    return BY_CONFIG[_config_type_name(entry.data_type)].wire
