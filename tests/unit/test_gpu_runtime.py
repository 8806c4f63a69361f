"""The CUDA side of an instance, as far as it runs without a GPU: accelerators from the
config, provider lists with their fallbacks, IO binding (on the CPU provider, the same
binding code a GPU instance runs), page-locked buffers and their fallback."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from tensorgate import _cuda_runtime
from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.errors import ModelLoadError
from tensorgate.runtime import gpu

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "server" / "tensorgate" / "demo_repository"


def config(text: str, name: str = "m") -> mc.ModelConfig:
    return text_format.Parse(f'name: "{name}" ' + text, mc.ModelConfig())


TRT = ('optimization { execution_accelerators { gpu_execution_accelerator [ '
       '{ name: "tensorrt" %s } ] } }')


def test_tensorrt_parameters_map_to_onnxruntime_options(tmp_path):
    params = ('parameters { key: "precision_mode" value: "fp16" } '
              'parameters { key: "max_workspace_size_bytes" value: "1073741824" } '
              'parameters { key: "trt_timing_cache_enable" value: "true" }')
    acc = gpu.accelerators(config(TRT % params, "enc"), 3, cache_root=tmp_path)
    assert acc.tensorrt == {
        "trt_engine_cache_enable": True, "trt_fp16_enable": True,
        "trt_max_workspace_size": 1073741824, "trt_timing_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path / "enc" / "3"),  # one cache per version
    }
    # the engine cache can be turned off, or put elsewhere
    off = gpu.accelerators(config(TRT % 'parameters { key: "trt_engine_cache_enable" value: "0" }'), 1)
    assert off.tensorrt == {"trt_engine_cache_enable": False}
    there = gpu.accelerators(
        config(TRT % 'parameters { key: "trt_engine_cache_path" value: "/srv/trt" }'), 1)
    assert there.tensorrt["trt_engine_cache_path"] == "/srv/trt"
    assert gpu.accelerators(config(""), 1).tensorrt is None


def test_default_engine_cache_is_under_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    acc = gpu.accelerators(config(TRT % ""), 2)
    assert acc.tensorrt["trt_engine_cache_path"] == str(tmp_path / "tensorgate" / "tensorrt" / "m" / "2")


@pytest.mark.parametrize("text, message", [
    ('optimization { execution_accelerators { gpu_execution_accelerator [ '
     '{ name: "tensorrt" }, { name: "tensorrt" } ] } }', "named twice"),
    ('optimization { execution_accelerators { gpu_execution_accelerator [ { name: "dml" } ] } }',
     "gpu_execution_accelerator 'dml': not supported"),
    ('optimization { execution_accelerators { cpu_execution_accelerator [ '
     '{ name: "openvino" } ] } }', "cpu_execution_accelerator 'openvino': not supported"),
    (TRT % 'parameters { key: "max_workspace_size_bytes" value: "-5" }',
     "'max_workspace_size_bytes': '-5': expected a positive integer"),
    (TRT % 'parameters { key: "trt_engine_cache_enable" value: "maybe" }',
     "expected 0, 1, true or false"),
])
def test_what_is_not_run_is_refused_naming_the_field(text, message):
    with pytest.raises(ModelLoadError, match=message):
        gpu.accelerators(config(text), 1)


def test_provider_lists_and_their_fallbacks(tmp_path):
    plain = gpu.Accelerators()
    assert gpu.providers(plain, 1, [gpu.CUDA, gpu.CPU]) == (
        [(gpu.CUDA, {"device_id": 1}), gpu.CPU], None)
    acc = gpu.Accelerators({"trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(tmp_path / "cache")})
    got, why = gpu.providers(acc, 0, [gpu.TENSORRT, gpu.CUDA, gpu.CPU])
    assert why is None and (tmp_path / "cache").is_dir()
    assert got == [(gpu.TENSORRT, {"trt_engine_cache_enable": True, "device_id": 0,
                                   "trt_engine_cache_path": str(tmp_path / "cache")}),
                   (gpu.CUDA, {"device_id": 0}), gpu.CPU]
    got, why = gpu.providers(acc, 0, [gpu.CUDA, gpu.CPU])
    assert got == [(gpu.CUDA, {"device_id": 0}), gpu.CPU]
    assert "TensorrtExecutionProvider is not in this onnxruntime build" in why
    blocked = tmp_path / "file"
    blocked.write_text("")
    acc = gpu.Accelerators({"trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(blocked / "cache")})
    got, why = gpu.providers(acc, 0, [gpu.TENSORRT, gpu.CUDA, gpu.CPU])
    assert got[0] == (gpu.CUDA, {"device_id": 0}) and "engine cache" in why


def _session(model: str):
    return ort.InferenceSession(str(DEMO / model / "1" / "model.onnx"),
                                providers=[gpu.CPU])


def test_bound_runner_answers_as_session_run():
    session = _session("simple_mlp")
    names = [o.name for o in session.get_outputs()]
    runner = gpu.BoundRunner(session, names, device="cpu")
    rng = np.random.default_rng(0)
    width = session.get_inputs()[0].shape[1]
    for rows in (1, 7, 3):  # batch sizes change between runs: the binding is redone
        x = rng.standard_normal((rows, width)).astype(np.float32)
        feed = {session.get_inputs()[0].name: x}
        for got, want in zip(runner(feed), session.run(names, feed)):
            np.testing.assert_array_equal(got, want)
    # a view that is not contiguous (a slice of a batch buffer's columns) is bound as a copy
    x = rng.standard_normal((4, width * 2)).astype(np.float32)[:, ::2]
    feed = {session.get_inputs()[0].name: x}
    np.testing.assert_array_equal(runner(feed)[0], session.run(names, feed)[0])


def test_bound_runner_keeps_bytes_tensors_on_the_host():
    session = _session("text_lower")
    names = [o.name for o in session.get_outputs()]
    runner = gpu.BoundRunner(session, names, device="cpu", pinned=True)
    assert not runner.bound and not runner.pinned  # strings are not bound: session.run
    text = np.array(["Hello", "WORLD"], dtype=object)
    feed = {session.get_inputs()[0].name: text}
    assert runner(feed)[0].tolist() == session.run(names, feed)[0].tolist() == [
        "hello", "world"]


class _FakeRuntime:
    """Host memory from ctypes instead of cudaHostAlloc: the wrapping and freeing."""

    def __init__(self, fail=False):
        self.live, self.freed, self.fail = {}, [], fail

    def host_alloc(self, nbytes):
        if self.fail:
            raise _cuda_runtime.CudaError("cudaHostAlloc", 2, "cudaErrorMemoryAllocation",
                                          "out of memory")
        buf = ctypes.create_string_buffer(nbytes)
        self.live[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free_host(self, address):
        self.freed.append(address)


def test_pinned_buffers_live_as_long_as_their_array():
    rt = _FakeRuntime()
    array, why = gpu.pinned_empty((4, 2), np.float32, runtime=rt)
    assert why is None and array.shape == (4, 2) and array.dtype == np.float32
    (address,) = rt.live
    assert array.ctypes.data == address
    array[:] = 3.0
    view = array[1:3]
    del array
    gc.collect()
    assert rt.freed == [] and (view == 3.0).all()  # a view keeps the memory
    del view
    gc.collect()
    assert rt.freed == [address]


def test_pinned_buffers_fall_back_to_ordinary_memory_with_the_reason():
    array, why = gpu.pinned_empty((2, 3), np.int64, runtime=_FakeRuntime(fail=True))
    assert array.shape == (2, 3) and "cudaErrorMemoryAllocation" in why
    if not Path("/dev/nvidia0").exists():
        # this machine: no CUDA runtime, or one without a device: ordinary memory, a reason
        array, why = gpu.pinned_empty((2, 3), np.float32)
        assert array.shape == (2, 3) and why
