"""GPU instances end to end. Without a GPU (CI): a model that asks for GPU instances and
TensorRT still loads and serves, on the CPU, and the log says why. With one (the GPU
machine): KIND_GPU instances answer what in-process onnxruntime-gpu answers on the
same device, through IO binding with page-locked batch buffers, with and without
TensorRT in front of CUDA."""

from __future__ import annotations

import ctypes
import shutil
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from e2e_support import infer_input, start_server

DEMO = Path(__file__).resolve().parents[2] / "server" / "tensorgate" / "demo_repository"
TRT = ('optimization { execution_accelerators { gpu_execution_accelerator [ '
       '{ name: "tensorrt" parameters { key: "trt_engine_cache_path" value: "%s" } } ] } }\n')


def _cuda_device() -> str | None:
    """None where a CUDA session really runs here; else why not (the skip reason)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider (pip install onnxruntime-gpu)"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    session = ort.InferenceSession(str(DEMO / "simple_mlp" / "1" / "model.onnx"),
                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return "onnxruntime-gpu could not open a CUDA session (CUDA/cuDNN libraries)"
    return None


NO_GPU = _cuda_device()
needs_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA GPU: {NO_GPU}")


def _mlp(repo: Path, name: str, kind: str, extra: str = "") -> None:
    shutil.copytree(DEMO / "simple_mlp", repo / name)
    text = (DEMO / "simple_mlp" / "config.pbtxt").read_text()
    text = text.replace('name: "simple_mlp"', f'name: "{name}"')
    text = text.replace("count: 1\n    kind: KIND_CPU", f"count: 2\n    kind: {kind}")
    assert f"kind: {kind}" in text
    (repo / name / "config.pbtxt").write_text(text + extra)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("gpu-repo")
    cache = tmp_path_factory.mktemp("trt-cache")
    _mlp(repo, "mlp_gpu", "KIND_GPU")
    _mlp(repo, "mlp_trt", "KIND_GPU", TRT % cache)
    with start_server(repo) as srv:
        srv.cache = cache
        yield srv


def _infer_many(url: str, model: str, batches: list[np.ndarray]) -> list[np.ndarray]:
    """Every batch from its own thread at once, so the batcher gathers them."""
    answers: list = [None] * len(batches)

    def one(i):
        client = grpcclient.InferenceServerClient(url)
        result = client.infer(model, [infer_input("INPUT0", batches[i])])
        answers[i] = result.as_numpy("OUTPUT0")
        client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


def _batches(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rows), 16)).astype(np.float32)
            for rows in rng.integers(1, 9, size=24)]


def test_without_a_gpu_the_model_serves_on_the_cpu_and_says_why(server):
    if NO_GPU is None:
        pytest.skip("this machine has a GPU: the GPU tests below cover it")
    batches = _batches(1)
    session = ort.InferenceSession(str(DEMO / "simple_mlp" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for model in ("mlp_gpu", "mlp_trt"):
        for x, got in zip(batches, _infer_many(server.grpc_url, model, batches)):
            np.testing.assert_allclose(got, session.run(None, {"INPUT0": x})[0], rtol=1e-6)
    log = server.log
    assert "asked for GPU 0 but CUDA is not usable here" in log
    assert 'gpu_execution_accelerator "tensorrt" applies to GPU instances' in log


@needs_gpu
@pytest.mark.parametrize("model", ["mlp_gpu", "mlp_trt"])
def test_gpu_instances_answer_as_onnxruntime_gpu_in_process(server, model):
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if model == "mlp_trt" and "TensorrtExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "TensorrtExecutionProvider")
    session = ort.InferenceSession(str(DEMO / "simple_mlp" / "1" / "model.onnx"),
                                   providers=providers)
    batches = _batches(2)
    for x, got in zip(batches, _infer_many(server.grpc_url, model, batches)):
        np.testing.assert_allclose(got, session.run(None, {"INPUT0": x})[0],
                                   rtol=1e-4, atol=1e-5)
    assert f"loaded {model}:1" in server.log and "2 instance(s) on cuda:0, cuda:0" in server.log
    assert "is not page-locked" not in server.log  # batch buffers pinned


@needs_gpu
def test_tensorrt_writes_its_engine_cache(server):
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no TensorRT provider")
    if "TensorRT (config gpu_execution_accelerator" in server.log:
        pytest.skip("TensorRT left out here: " + server.log.split("left out: ")[1][:200])
    _infer_many(server.grpc_url, "mlp_trt", _batches(3))
    assert any(server.cache.rglob("*")), "no TensorRT engine cache files written"
