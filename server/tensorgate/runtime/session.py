"""Build ONNX Runtime sessions from a model config: providers and session options.

Session options come from config ``parameters`` (the keys Triton's onnxruntime backend
uses) and ``optimization.graph.level``. CUDA is used only when an instance group asks for
a GPU *and* the session really got the CUDA provider; otherwise the CPU, and the log says
which and why.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.errors import ModelLoadError
from tensorgate.runtime import gpu

log = logging.getLogger("tensorgate.runtime")

CUDA = gpu.CUDA
CPU = gpu.CPU

_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class InstanceSpec:
    """One model instance to create: which device it wants."""

    group: str
    kind: int  # mc.ModelInstanceGroup.Kind
    gpu: int  # device id, when kind asks for a GPU


def _int_param(params: dict[str, str], key: str, low: int, high: int) -> int | None:
    if key not in params:
        return None
    raw = params[key]
    try:
        value = int(raw)
    except ValueError:
        raise ModelLoadError(f"config.pbtxt parameters {key}: expected an integer, got {raw!r}")
    if not low <= value <= high:
        raise ModelLoadError(f"config.pbtxt parameters {key}: {value} is not in {low}..{high}")
    return value


def bool_param(params: dict[str, str], key: str) -> bool | None:
    """A boolean config parameter; None when absent, ModelLoadError when not a boolean."""
    if key not in params:
        return None
    raw = params[key].strip().lower()
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ModelLoadError(f"config.pbtxt parameters {key}: expected a boolean, got {params[key]!r}")


def session_options(config: mc.ModelConfig) -> ort.SessionOptions:
    params = {k: v.string_value for k, v in config.parameters.items()}
    opts = ort.SessionOptions()
    intra = _int_param(params, "intra_op_thread_count", 0, 1024)
    if intra is not None:
        opts.intra_op_num_threads = intra
    inter = _int_param(params, "inter_op_thread_count", 0, 1024)
    if inter is not None:
        opts.inter_op_num_threads = inter
    mode = _int_param(params, "execution_mode", 0, 1)
    if mode is not None:
        opts.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if mode == 1 else ort.ExecutionMode.ORT_SEQUENTIAL
        )
    # Triton's onnxruntime backend: level -1 basic, 1 extended, anything else all.
    level = config.optimization.graph.level if config.HasField("optimization") else 0
    opts.graph_optimization_level = {
        -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if "graph_optimization_level" in params:
        name = params["graph_optimization_level"].strip().lower()
        if name not in _GRAPH_LEVELS:
            raise ModelLoadError(
                "config.pbtxt parameters graph_optimization_level: expected one of "
                f"{', '.join(_GRAPH_LEVELS)}, got {params['graph_optimization_level']!r}"
            )
        opts.graph_optimization_level = _GRAPH_LEVELS[name]
    for key, attr in (("enable_mem_arena", "enable_cpu_mem_arena"),
                      ("enable_mem_pattern", "enable_mem_pattern")):
        value = bool_param(params, key)
        if value is not None:
            setattr(opts, attr, value)
    # Spinning intra-op threads burn the cores the event loop needs; off unless asked for.
    spinning = bool_param(params, "allow_spinning")
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def instance_specs(config: mc.ModelConfig) -> list[InstanceSpec]:
    specs = []
    for group in config.instance_group:
        gpus = list(group.gpus) or [0]
        for i in range(group.count):
            specs.append(InstanceSpec(group.name, group.kind, gpus[i % len(gpus)]))
    return specs


# None until a session has tried CUDA: onnxruntime-gpu lists the CUDA provider even where
# the CUDA libraries are missing, and only a real session tells whether it works.
_cuda_works: bool | None = None


def _driver_present() -> bool:
    """Without the NVIDIA driver library no CUDA session can work; checking it first
    spares CPU-only machines onnxruntime's loud failure to load the CUDA provider."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cuda_usable() -> bool:
    global _cuda_works
    if _cuda_works is None and not _driver_present():
        _cuda_works = False
    return CUDA in ort.get_available_providers() and _cuda_works is not False


def create_session(
    model_bytes: bytes, opts: ort.SessionOptions, spec: InstanceSpec, label: str,
    accelerators: gpu.Accelerators | None = None,
) -> tuple[ort.InferenceSession, str]:
    """Create one session; returns it with the device it really runs on."""
    kinds = mc.ModelInstanceGroup
    acc = accelerators or gpu.Accelerators()
    wants_gpu = spec.kind in (kinds.KIND_GPU, kinds.KIND_AUTO)
    providers: list = [CPU]
    if wants_gpu and cuda_usable():
        providers, left_out = gpu.providers(acc, spec.gpu, ort.get_available_providers())
        if left_out:
            log.warning("%s instance %s: TensorRT (config gpu_execution_accelerator "
                        "\"tensorrt\") left out: %s", label, spec.group, left_out)
    try:
        session = ort.InferenceSession(model_bytes, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelLoadError(f"onnxruntime could not load the model: {exc}") from None
    got = session.get_providers()[0]
    on_gpu = got in (CUDA, gpu.TENSORRT)
    global _cuda_works
    if providers[0] != CPU:
        _cuda_works = on_gpu
        if not _cuda_works:
            log.info("CUDA is not usable here; models load on the CPU from now on")
    if spec.kind == kinds.KIND_GPU and not on_gpu:
        log.warning(
            "%s instance %s asked for GPU %d but CUDA is not usable here (providers: %s); "
            "running on the CPU", label, spec.group, spec.gpu, ", ".join(session.get_providers()),
        )
    if acc.tensorrt is not None and not on_gpu:
        log.warning("%s instance %s: config gpu_execution_accelerator \"tensorrt\" applies to "
                    "GPU instances; this one runs on the CPU without it", label, spec.group)
    return session, ("cuda:%d" % spec.gpu) if on_gpu else "cpu"


# model_operations { op_library_filename: "onnxruntime_extensions" } names the custom-op
# library of the onnxruntime-extensions package (tokenizers, string and audio ops) by
# its package name, where it is installed.
EXTENSIONS_LIBRARY = "onnxruntime_extensions"


def import_onnxruntime_extensions():
    """``onnxruntime_extensions``, imported without its side effect: the import sets
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in os.environ, which would put every
    process started afterwards (a test's servers, a batch job's workers) on protobuf's
    slow pure-Python implementation, with different serialization details."""
    key = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
    before = os.environ.get(key)
    try:
        import onnxruntime_extensions
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
    return onnxruntime_extensions


def register_op_libraries(opts: ort.SessionOptions, config: mc.ModelConfig, files) -> list[str]:
    """Register the custom-op libraries of config ``model_operations`` (Triton's field)
    with the session options; the paths registered. A file name is relative to the
    model's directory and may not leave the repository; ``onnxruntime_extensions``
    means that package's library."""
    registered = []
    for name in config.model_operations.op_library_filename:
        if name == EXTENSIONS_LIBRARY:
            try:
                onnxruntime_extensions = import_onnxruntime_extensions()
            except ImportError:
                raise ModelLoadError(
                    "config.pbtxt model_operations op_library_filename "
                    f"'{EXTENSIONS_LIBRARY}': the package is not installed "
                    "(pip install onnxruntime-extensions)"
                ) from None
            path = onnxruntime_extensions.get_library_path()
        else:
            path = str(files.op_library(name))
            if not Path(path).is_file():
                raise ModelLoadError(
                    f"config.pbtxt model_operations op_library_filename '{name}': no such "
                    "file in the model's directory"
                )
        try:
            opts.register_custom_ops_library(path)
        except Exception as exc:  # onnxruntime's own error types
            raise ModelLoadError(
                f"config.pbtxt model_operations op_library_filename '{name}': cannot load "
                f"it ({str(exc)[:200]})"
            ) from None
        registered.append(path)
    return registered
