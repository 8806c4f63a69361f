"""The CUDA side of a model instance: which execution providers, and how a batch moves.

Providers. An instance that asks for a GPU (``instance_group { kind: KIND_GPU }``, or
KIND_AUTO) runs on ONNX Runtime's CUDA provider where it works. Triton's accelerator
field puts TensorRT in front of it::

    optimization { execution_accelerators { gpu_execution_accelerator: [
        { name: "tensorrt"
          parameters { key: "precision_mode" value: "FP16" } } ] } }

with Triton's onnxruntime-backend parameters (``TRT_PARAMETERS``), and an engine cache
on by default (building a TensorRT engine takes seconds to minutes; the cache makes the
second load of a version fast) under ``$XDG_CACHE_HOME/tensorgate/tensorrt/<model>/<version>``
unless ``trt_engine_cache_path`` says where. Where TensorRT is not in the onnxruntime
build, or the instance got no GPU, the instance runs without it and the log says why.
Each instance is its own session, so its own CUDA stream.

Moving a batch. A CUDA instance runs with IO binding (``BoundRunner``): the batch is
gathered into host buffers that are page-locked where the CUDA runtime allows it
(``pinned_empty``; a copy from pinned memory goes to the device by DMA, without the
driver's staging copy), bound as the inputs, copied to the device once; outputs are
bound on the device and copied back once per batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tensorgate import _cuda_runtime
from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.errors import ModelLoadError

log = logging.getLogger("tensorgate.runtime")

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# Triton's onnxruntime backend: accelerator parameter -> (ONNX Runtime TensorRT option,
# value check and conversion).
def _precision(value: str) -> dict:
    mode = value.strip().upper()
    if mode not in ("FP32", "FP16"):
        raise ValueError("expected FP32 or FP16")
    return {"trt_fp16_enable": mode == "FP16"}


def _positive_int(option: str):
    def convert(value: str) -> dict:
        number = int(value)
        if number <= 0:
            raise ValueError("expected a positive integer")
        return {option: number}
    return convert


def _flag(option: str):
    def convert(value: str) -> dict:
        raw = value.strip().lower()
        if raw not in ("0", "1", "true", "false"):
            raise ValueError("expected 0, 1, true or false")
        return {option: raw in ("1", "true")}
    return convert


TRT_PARAMETERS = {
    "precision_mode": _precision,
    "max_workspace_size_bytes": _positive_int("trt_max_workspace_size"),
    "trt_max_partition_iterations": _positive_int("trt_max_partition_iterations"),
    "trt_min_subgraph_size": _positive_int("trt_min_subgraph_size"),
    "trt_engine_cache_enable": _flag("trt_engine_cache_enable"),
    "trt_engine_cache_path": lambda value: {"trt_engine_cache_path": value},
    "trt_timing_cache_enable": _flag("trt_timing_cache_enable"),
    "trt_build_heuristics_enable": _flag("trt_build_heuristics_enable"),
}


@dataclass(frozen=True)
class Accelerators:
    """What a model's config asks of its GPU instances."""

    tensorrt: dict | None = None  # TensorRT provider options (device_id added per instance)
    notes: tuple = field(default=())  # what was adjusted, for the load log


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tensorgate" / "tensorrt"


def accelerators(config: mc.ModelConfig, version: int | str,
                 cache_root: Path | None = None) -> Accelerators:
    """The config's execution accelerators, checked: ModelLoadError naming the field for
    anything TensorGate does not run (an unknown accelerator, a CPU accelerator, an
    unknown or malformed parameter)."""
    chosen = config.optimization.execution_accelerators
    for entry in chosen.cpu_execution_accelerator:
        raise ModelLoadError(
            f"config.pbtxt optimization.execution_accelerators.cpu_execution_accelerator "
            f"'{entry.name}': not supported by TensorGate (the CPU instances run ONNX "
            "Runtime's CPU provider); remove it"
        )
    tensorrt = None
    for entry in chosen.gpu_execution_accelerator:
        where = f"config.pbtxt optimization.execution_accelerators.gpu_execution_accelerator '{entry.name}'"
        if entry.name != "tensorrt":
            raise ModelLoadError(
                f"{where}: not supported by TensorGate (GPU instances run ONNX Runtime's "
                "CUDA provider, with TensorRT in front of it when named \"tensorrt\")"
            )
        if tensorrt is not None:
            raise ModelLoadError(f"{where}: named twice")
        options = {"trt_engine_cache_enable": True}
        for key, value in entry.parameters.items():
            convert = TRT_PARAMETERS.get(key)
            if convert is None:
                raise ModelLoadError(
                    f"{where} parameter '{key}': not a TensorRT parameter TensorGate knows "
                    f"(known: {', '.join(sorted(TRT_PARAMETERS))})"
                )
            try:
                options.update(convert(value))
            except ValueError as exc:
                raise ModelLoadError(f"{where} parameter '{key}': {value!r}: {exc}") from None
        if options["trt_engine_cache_enable"] and "trt_engine_cache_path" not in options:
            root = cache_root if cache_root is not None else default_cache_root()
            options["trt_engine_cache_path"] = str(root / config.name / str(version))
        tensorrt = options
    return Accelerators(tensorrt)


def providers(acc: Accelerators, device: int, available: list[str]) -> tuple[list, str | None]:
    """The provider list for an instance on CUDA device ``device``, and why TensorRT was
    left out when it was asked for (None otherwise)."""
    cuda = (CUDA, {"device_id": device})
    if acc.tensorrt is None:
        return [cuda, CPU], None
    if TENSORRT not in available:
        return [cuda, CPU], (f"{TENSORRT} is not in this onnxruntime build (providers: "
                             f"{', '.join(available)}); running on CUDA without it")
    path = acc.tensorrt.get("trt_engine_cache_path")
    if path:
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return [cuda, CPU], (f"its engine cache {path!r} cannot be made ({exc.strerror}); "
                                 "running on CUDA without TensorRT")
    return [(TENSORRT, {**acc.tensorrt, "device_id": device}), cuda, CPU], None


# -- page-locked host memory -------------------------------------------------------------


def _free_host(runtime, address: int) -> None:
    try:
        runtime.free_host(address)
    except Exception as exc:  # a finalizer: log, never raise
        log.error("freeing a page-locked batch buffer failed: %s", exc)


def pinned_empty(shape: tuple, dtype, runtime=None) -> tuple[np.ndarray, str | None]:
    """An uninitialised array in page-locked host memory (``runtime``: the CUDA
    runtime, by default the process's ``_cuda_runtime.shared()``), freed when the array
    goes; where that is not possible, an ordinary one and the reason."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    try:
        rt = runtime if runtime is not None else _cuda_runtime.shared()
        address = rt.host_alloc(nbytes)
    except (_cuda_runtime.RuntimeMissing, _cuda_runtime.CudaError) as exc:
        return np.empty(shape, dtype), str(exc)
    raw = (ctypes.c_char * max(nbytes, 1)).from_address(address)
    array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)
    weakref.finalize(raw, _free_host, rt, address)  # the array keeps ``raw`` alive
    return array, None


# -- IO binding ----------------------------------------------------------------------------


class BoundRunner:
    """Runs one session through one IO binding (a worker thread's own): each input
    bound where it lies in host memory (ONNX Runtime copies it to the device once),
    each output bound on ``device`` and copied back to the host once. ``pinned``: the
    batcher gathers into page-locked buffers for this runner. A graph with a string
    (BYTES) input or output runs with ``session.run``: ONNX Runtime binds no strings."""

    def __init__(self, session, output_names: list[str], device: str = "cuda",
                 device_id: int = 0, pinned: bool = False) -> None:
        self._session = session
        self._names = list(output_names)
        self._device = device
        self._device_id = device_id
        tensors = list(session.get_inputs()) + list(session.get_outputs())
        self.bound = all(t.type != "tensor(string)" for t in tensors)
        self._binding = session.io_binding() if self.bound else None
        self.pinned = pinned and self.bound

    def __call__(self, feed: dict) -> list[np.ndarray]:
        binding = self._binding
        if binding is None:
            return self._session.run(self._names, feed)
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self._names:
            binding.bind_output(name, self._device, self._device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
