"""The CUDA shared-memory registry: validation and refusals in Triton's words, status and
unregister, the region checks of tensors (against a fake CUDA runtime that keeps device
memory in bytearrays), a region's lifetime, and one real round trip where a GPU is."""

from __future__ import annotations

import base64
import gc
import os
import subprocess
import sys
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from tensorgate import _cuda_runtime
from tensorgate.cuda_shared_memory import CudaSharedMemory
from tensorgate.errors import (
    AlreadyExists, InvalidArgument, NotFound, RuntimeFailure, Unimplemented,
)
from tensorgate.dtypes import BY_WIRE
from tensorgate.shared_memory import SystemSharedMemory, write_output
from tensorgate.tensors import TensorSpec, request_inputs, requested_outputs


class FakeRuntime:
    """Device memory as bytearrays: ``allocate`` gives a handle, ``open`` maps it at a
    fake address. Any access outside a mapping fails the test: the registry must check
    offsets and sizes before it copies."""

    def __init__(self, devices: int = 1) -> None:
        self.devices = devices
        self.allocations: dict[bytes, tuple[int, bytearray]] = {}
        self.mapped: dict[int, bytearray] = {}
        self.closed: list[int] = []
        self.fail_copies = False

    def allocate(self, data: bytes, device: int = 0) -> bytes:
        handle = os.urandom(_cuda_runtime.HANDLE_SIZE)
        self.allocations[handle] = (device, bytearray(data))
        return handle

    def device_count(self) -> int:
        return self.devices

    def open(self, handle: bytes, device_id: int) -> int:
        device, memory = self.allocations.get(handle, (None, None))
        if device != device_id:
            raise _cuda_runtime.CudaError(
                "cudaIpcOpenMemHandle", 400, "cudaErrorInvalidResourceHandle", "invalid"
            )
        base = (len(self.mapped) + len(self.closed) + 1) << 32
        self.mapped[base] = memory
        return base

    def _at(self, pointer: int, nbytes: int) -> tuple[bytearray, int]:
        for base, memory in self.mapped.items():
            if base <= pointer and pointer + nbytes <= base + len(memory):
                return memory, pointer - base
        raise AssertionError(f"access outside any mapping: {pointer:#x} + {nbytes}")

    def allocation_size(self, device_id: int, pointer: int) -> int:
        memory, at = self._at(pointer, 0)
        return len(memory) - at

    def read(self, device_id: int, pointer: int, nbytes: int) -> np.ndarray:
        if self.fail_copies:
            raise _cuda_runtime.CudaError("cudaMemcpy", 700, "cudaErrorIllegalAddress", "x")
        memory, at = self._at(pointer, nbytes)
        return np.frombuffer(bytes(memory[at:at + nbytes]), np.uint8).copy()

    def write(self, device_id: int, pointer: int, data: memoryview) -> None:
        if self.fail_copies:
            raise _cuda_runtime.CudaError("cudaMemcpy", 700, "cudaErrorIllegalAddress", "x")
        memory, at = self._at(pointer, data.nbytes)
        memory[at:at + data.nbytes] = bytes(data)

    def close(self, device_id: int, pointer: int) -> None:
        del self.mapped[pointer]
        self.closed.append(pointer)


class UntouchableRuntime:
    """A runtime no call may reach (validation comes before CUDA)."""

    def __getattr__(self, name):
        raise AssertionError(f"CUDA reached: {name}")


FLOATS = np.arange(16, dtype=np.float32).tobytes()  # 64 bytes


def _params(region, byte_size, offset=None):
    params = {"shared_memory_region": region, "shared_memory_byte_size": byte_size}
    if offset is not None:
        params["shared_memory_offset"] = offset
    return params


@pytest.fixture
def fake():
    return FakeRuntime()


@pytest.fixture
def registry(fake):
    return CudaSharedMemory(SystemSharedMemory(allowed=True), runtime=fake)


@pytest.fixture
def system_key():
    key = f"/tg_cuda_unit_{uuid.uuid4().hex[:8]}"
    with open("/dev/shm" + key, "wb") as f:
        f.write(b"\x07" * 32)
    yield key
    os.unlink("/dev/shm" + key)


# -- validation, before CUDA -----------------------------------------------------------

HANDLE = b"\x01" * 64


@pytest.mark.parametrize("name, handle, device_id, byte_size, message", [
    ("", HANDLE, 0, 64, "a shared memory region needs a name"),
    ("r", b"\x01" * 63, 0, 64, "'raw_handle' must be a cudaIpcMemHandle_t \\(64 bytes\\), "
                               "got 63 bytes"),
    ("r", b"\x01" * 65, 0, 64, "got 65 bytes"),
    ("r", base64.b64encode(HANDLE).decode(), 0, 64, "got str"),
    ("r", HANDLE, 0, 0, "failed to register shared memory region 'r': byte_size is 0"),
    ("r", HANDLE, 0, -1, "byte_size must be a non-negative integer, got -1"),
    ("r", HANDLE, -1, 64, "device_id must be a non-negative integer, got -1"),
    ("r", HANDLE, True, 64, "device_id must be a non-negative integer, got True"),
    ("r", HANDLE, 0, 64.0, "byte_size must be a non-negative integer, got 64.0"),
])
def test_register_validates_before_touching_cuda(name, handle, device_id, byte_size, message):
    registry = CudaSharedMemory(SystemSharedMemory(allowed=True), runtime=UntouchableRuntime())
    with pytest.raises(InvalidArgument, match=message):
        registry.register(name, handle, device_id, byte_size)
    assert registry.status() == []


def test_a_name_is_taken_by_a_cuda_or_a_system_region(registry, fake, system_key):
    registry.register("r", fake.allocate(FLOATS), 0, 64)
    with pytest.raises(AlreadyExists, match="^shared memory region 'r' already in manager$"):
        registry.register("r", fake.allocate(FLOATS), 0, 64)
    registry.system.register("sys", system_key, 0, 32)
    with pytest.raises(AlreadyExists, match="shared memory region 'sys' already in manager"):
        registry.register("sys", fake.allocate(FLOATS), 0, 64)
    assert len(fake.mapped) == 1  # the refused ones were never opened


def test_disabled_registry_refuses_changes_but_reports_status():
    registry = CudaSharedMemory(SystemSharedMemory(allowed=False), runtime=UntouchableRuntime())
    with pytest.raises(Unimplemented, match="--allow-client-shm"):
        registry.register("r", HANDLE, 0, 64)
    with pytest.raises(Unimplemented, match="--allow-client-shm"):
        registry.unregister("r")
    assert registry.status() == []
    with pytest.raises(InvalidArgument, match="disabled"):  # a tensor naming a region
        registry.input_bytes("IN", _params("r", 4))


# -- without a GPU ---------------------------------------------------------------------

def test_without_a_cuda_runtime_register_says_so(monkeypatch):
    def missing():
        raise _cuda_runtime.RuntimeMissing(
            "no CUDA runtime (libcudart) on this server; tried libcudart.so"
        )

    monkeypatch.setattr(_cuda_runtime, "shared", missing)
    registry = CudaSharedMemory(SystemSharedMemory(allowed=True))
    with pytest.raises(InvalidArgument) as caught:
        registry.register("r", HANDLE, 0, 64)
    assert caught.value.message == (
        "failed to register CUDA shared memory region: 'r', GPUs not supported: no CUDA "
        "runtime (libcudart) on this server; tried libcudart.so"
    )
    assert caught.value.status.grpc == 3 and caught.value.status.http == 400  # as Triton
    assert registry.status() == []


class NoDriver:
    def device_count(self):
        raise _cuda_runtime.CudaError("cudaGetDeviceCount", 35, "cudaErrorInsufficientDriver",
                                      "CUDA driver version is insufficient")


class NoDevice:
    def device_count(self):
        return 0


@pytest.mark.parametrize("runtime, why", [
    (NoDriver(), "no CUDA device \\(cudaGetDeviceCount: cudaErrorInsufficientDriver"),
    (NoDevice(), "no CUDA device \\(cudaGetDeviceCount: 0\\)"),
])
def test_without_a_cuda_device_register_says_so(runtime, why):
    registry = CudaSharedMemory(SystemSharedMemory(allowed=True), runtime=runtime)
    with pytest.raises(InvalidArgument,
                       match="^failed to register CUDA shared memory region: 'r', GPUs not "
                             "supported: " + why):
        registry.register("r", HANDLE, 0, 64)


def _has_cuda_device() -> bool:
    try:
        return _cuda_runtime.load().device_count() > 0
    except (_cuda_runtime.RuntimeMissing, _cuda_runtime.CudaError, OSError):
        return False


HAS_DEVICE = _has_cuda_device()


@pytest.mark.skipif(HAS_DEVICE, reason="this machine has a CUDA device")
def test_this_gpu_less_machine_gets_the_precise_refusal():
    """The real binding, loaded at the first registration, on this machine."""
    registry = CudaSharedMemory(SystemSharedMemory(allowed=True))
    with pytest.raises(InvalidArgument,
                       match="^failed to register CUDA shared memory region: 'r', GPUs not "
                             "supported: no CUDA (runtime \\(libcudart\\)|device)"):
        registry.register("r", HANDLE, 0, 64)


def test_the_runtime_is_loaded_at_the_first_registration_only(monkeypatch):
    def load():
        raise AssertionError("loaded")

    monkeypatch.setattr(_cuda_runtime, "shared", load)
    registry = CudaSharedMemory(SystemSharedMemory(allowed=True))
    assert registry.status() == []
    registry.unregister("")
    registry.unregister("nobody")
    with pytest.raises(AssertionError, match="loaded"):
        registry.register("r", HANDLE, 0, 64)


# -- registration against the runtime --------------------------------------------------

def test_register_refuses_what_cuda_refuses(registry, fake):
    handle = fake.allocate(FLOATS)
    with pytest.raises(InvalidArgument, match="'r': invalid args \\(device_id 1; this "
                                              "server sees 1 CUDA device\\(s\\)\\)"):
        registry.register("r", handle, 1, 64)
    with pytest.raises(InvalidArgument, match="'r': invalid args \\(cudaIpcOpenMemHandle on "
                                              "device 0: cudaErrorInvalidResourceHandle\\)"):
        registry.register("r", b"\x09" * 64, 0, 64)
    with pytest.raises(InvalidArgument, match="'r': invalid args \\(byte_size 65 > the "
                                              "allocation's 64 bytes\\)"):
        registry.register("r", handle, 0, 65)
    assert fake.mapped == {} and len(fake.closed) == 1  # the oversized one was closed
    assert registry.status() == []


def test_status_and_unregister_as_triton(registry, fake, system_key):
    registry.register("a", fake.allocate(FLOATS), 0, 64)
    registry.register("b", fake.allocate(FLOATS), 0, 16)
    registry.system.register("sys", system_key, 0, 32)
    assert registry.status() == [{"name": "a", "device_id": 0, "byte_size": 64},
                                 {"name": "b", "device_id": 0, "byte_size": 16}]
    assert registry.status("b") == [{"name": "b", "device_id": 0, "byte_size": 16}]
    with pytest.raises(NotFound, match="^Unable to find cuda shared memory region: 'x'$"):
        registry.status("x")
    with pytest.raises(NotFound, match="The region named 'sys' is registered as system "
                                       "shared memory, not CUDA shared memory"):
        registry.status("sys")
    registry.unregister("x")  # unknown: OK, as Triton
    registry.unregister("sys")  # a system region: not this registry's to remove
    assert [r["name"] for r in registry.system.status()] == ["sys"]
    registry.unregister("a")
    assert [r["name"] for r in registry.status()] == ["b"]
    registry.unregister()  # every CUDA region, no system one
    assert registry.status() == [] and fake.mapped == {}
    assert [r["name"] for r in registry.system.status()] == ["sys"]


# -- tensors ---------------------------------------------------------------------------

def test_inputs_are_read_at_their_offset_into_a_copy(registry, fake):
    handle = fake.allocate(FLOATS)
    registry.register("r", handle, 0, 64)
    data = registry.input_bytes("IN", _params("r", 16, 8))
    arr = np.frombuffer(data, np.float32)
    np.testing.assert_array_equal(arr, [2, 3, 4, 5])
    fake.allocations[handle][1][:] = b"\xff" * 64  # the client reuses its region
    np.testing.assert_array_equal(arr, [2, 3, 4, 5])
    whole = np.frombuffer(registry.input_bytes("IN", _params("r", 64)), np.float32)
    assert whole.tobytes() == b"\xff" * 64


@pytest.mark.parametrize("offset, byte_size, message", [
    (64, 4, "^Invalid offset for shared memory region: 'r'$"),
    (100, 0, "^Invalid offset for shared memory region: 'r'$"),
    (60, 8, "^Invalid offset \\+ byte size for shared memory region: 'r' \\(offset 60 \\+ "
            "byte size 8 > the region's 64\\)$"),
    (0, 65, "Invalid offset \\+ byte size for shared memory region: 'r'"),
])
def test_tensor_offsets_and_sizes_are_checked_in_tritons_words(registry, fake, offset,
                                                               byte_size, message):
    registry.register("r", fake.allocate(FLOATS + b"\x00" * 64), 0, 64)  # region < allocation
    with pytest.raises(InvalidArgument, match=message):
        registry.input_bytes("IN", _params("r", byte_size, offset))
    with pytest.raises(InvalidArgument, match=message):
        registry.output_span("OUT", _params("r", byte_size, offset))


def test_tensor_parameters_are_checked_as_for_system_regions(registry, fake):
    registry.register("r", fake.allocate(FLOATS), 0, 64)
    with pytest.raises(InvalidArgument, match="'shared_memory_byte_size' must be specified "
                                              "along with 'shared_memory_region'"):
        registry.input_bytes("IN", {"shared_memory_region": "r"})
    with pytest.raises(InvalidArgument, match="'shared_memory_offset' parameter for tensor "
                                              "'OUT' is negative"):
        registry.output_span("OUT", _params("r", 4, -4))


def test_outputs_are_written_at_their_offset(registry, fake):
    handle = fake.allocate(b"\x00" * 64)
    registry.register("r", handle, 0, 64)
    span = registry.output_span("OUT", _params("r", 16, 32))
    entry = ("OUT", "FP32", (4,), np.array([1, 2, 3, 4], np.float32))
    assert write_output(entry, span) == ("OUT", "FP32", (4,), b"")
    memory = fake.allocations[handle][1]
    assert bytes(memory[32:48]) == np.array([1, 2, 3, 4], np.float32).tobytes()
    assert bytes(memory[:32]) + bytes(memory[48:]) == b"\x00" * 48
    small = registry.output_span("OUT", _params("r", 8, 0))
    with pytest.raises(InvalidArgument, match="should be at least 16 bytes"):
        write_output(entry, small)


def test_system_regions_are_found_through_the_same_lookup(registry, fake, system_key):
    registry.system.register("sys", system_key, 0, 32)
    assert bytes(registry.input_bytes("IN", _params("sys", 4, 4))) == b"\x07" * 4
    with pytest.raises(InvalidArgument, match="^Unable to find shared memory region: 'nope'$"):
        registry.input_bytes("IN", _params("nope", 4))
    with pytest.raises(InvalidArgument, match="^Unable to find shared memory region: 'nope'$"):
        registry.output_span("OUT", _params("nope", 4))


def test_a_failed_copy_is_an_internal_error_naming_the_region(registry, fake):
    registry.register("r", fake.allocate(FLOATS), 0, 64)
    span = registry.output_span("OUT", _params("r", 4))
    fake.fail_copies = True
    with pytest.raises(RuntimeFailure, match="^CUDA shared memory region 'r': reading an "
                                             "input failed \\(cudaMemcpy: cudaErrorIllegal"):
        registry.input_bytes("IN", _params("r", 4))
    with pytest.raises(RuntimeFailure, match="writing an output failed"):
        span.write(memoryview(b"\x00" * 4))


def test_an_unregistered_region_is_unmapped_after_its_last_output(registry, fake):
    handle = fake.allocate(b"\x00" * 64)
    registry.register("busy", handle, 0, 64)
    registry.register("idle", fake.allocate(FLOATS), 0, 64)
    span = registry.output_span("OUT", _params("busy", 4))
    registry.unregister()
    gc.collect()
    assert len(fake.closed) == 1 and len(fake.mapped) == 1  # "idle" at once, "busy" waits
    with pytest.raises(InvalidArgument, match="Unable to find shared memory region: 'busy'"):
        registry.output_span("OUT", _params("busy", 4))
    span.write(memoryview(b"\x05" * 4))  # the request still running writes its output
    assert bytes(fake.allocations[handle][1][:4]) == b"\x05" * 4
    del span
    gc.collect()
    assert len(fake.closed) == 2 and fake.mapped == {}


def _tensor(name, datatype, shape, params):
    return SimpleNamespace(name=name, datatype=datatype, shape=shape, parameters=params,
                           contents=None)


def test_the_data_planes_tensor_functions_take_cuda_regions(registry, fake):
    """What dataplane hands request_inputs and requested_outputs: inputs from a CUDA
    region (FP32 and BYTES) beside a raw one, an output span into the region."""
    strings = b"\x03\x00\x00\x00abc\x01\x00\x00\x00z"
    handle = fake.allocate(FLOATS + strings + b"\x00" * 16)
    registry.register("r", handle, 0, 64 + len(strings) + 16)
    specs = {"A": TensorSpec("A", BY_WIRE["FP32"], (4,), None),
             "S": TensorSpec("S", BY_WIRE["BYTES"], (2,), None),
             "B": TensorSpec("B", BY_WIRE["FP32"], (4,), None)}
    request = SimpleNamespace(
        inputs=[_tensor("A", "FP32", (1, 4), _params("r", 16, 16)),
                _tensor("S", "BYTES", (1, 2), _params("r", len(strings), 64)),
                _tensor("B", "FP32", (1, 4), None)],
        raw_input_contents=[np.ones(4, np.float32).tobytes()],
        outputs=[SimpleNamespace(name="B", parameters=_params("r", 16, 64 + len(strings)))],
    )
    arrays, rows, _ = request_inputs(request, specs, 8, "m", shared_memory=registry)
    assert rows == 1
    np.testing.assert_array_equal(arrays["A"], [[4, 5, 6, 7]])
    assert arrays["S"].tolist() == [["abc", "z"]]  # BYTES inputs reach models as str
    [(spec, k, span)] = requested_outputs(request, specs, "m", shared_memory=registry)
    write_output(("B", "FP32", (1, 4), arrays["A"] * 2), span)
    end = 64 + len(strings)
    assert bytes(fake.allocations[handle][1][end:]) == np.float32([8, 10, 12, 14]).tobytes()
    request.inputs[0].parameters = _params("r", 16, 80)  # the region holds 92 bytes
    with pytest.raises(InvalidArgument, match="Invalid offset \\+ byte size for shared "
                                              "memory region: 'r'"):
        request_inputs(request, specs, 8, "m", shared_memory=registry)


# -- a real region, where a GPU is -----------------------------------------------------

def _client_can_make_regions() -> bool:
    if not HAS_DEVICE:
        return False
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401 (needs cuda-python)
    except Exception:
        return False
    return True


# A client process: CUDA IPC handles open only in another process than the exporter's.
_CLIENT = """
import sys
import numpy as np
import tritonclient.utils.cuda_shared_memory as cudashm
region = cudashm.create_shared_memory_region("tg_unit_gpu", 64, 0)
cudashm.set_shared_memory_region(region, [np.arange(16, dtype=np.float32)])
print(cudashm.get_raw_handle(region).decode(), flush=True)
sys.stdin.readline()
values = cudashm.get_contents_as_numpy(region, np.float32, [16])
print(" ".join(str(int(v)) for v in values), flush=True)
sys.stdin.readline()
cudashm.destroy_shared_memory_region(region)
"""


@pytest.mark.skipif(not _client_can_make_regions(),
                    reason="needs a CUDA device and tritonclient's cuda_shared_memory")
def test_a_tritonclient_region_round_trips_on_the_gpu():
    client = subprocess.Popen([sys.executable, "-c", _CLIENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        handle = base64.b64decode(client.stdout.readline())
        assert len(handle) == 64
        registry = CudaSharedMemory(SystemSharedMemory(allowed=True))
        with pytest.raises(InvalidArgument, match="invalid args \\(byte_size 1073741824 > "
                                                  "the allocation's"):
            registry.register("huge", handle, 0, 1 << 30)
        registry.register("gpu", handle, 0, 64)
        assert registry.status("gpu") == [{"name": "gpu", "device_id": 0, "byte_size": 64}]
        first = np.frombuffer(registry.input_bytes("IN", _params("gpu", 32)), np.float32)
        np.testing.assert_array_equal(first, np.arange(8, dtype=np.float32))
        span = registry.output_span("OUT", _params("gpu", 32, 32))
        entry = ("OUT", "FP32", (8,), np.arange(100, 108, dtype=np.float32))
        assert write_output(entry, span)[3] == b""
        del span
        registry.unregister("gpu")  # unmapped now: no output is pending
        gc.collect()
        client.stdin.write("\n")
        client.stdin.flush()
        seen = client.stdout.readline().split()
        assert seen == [str(i) for i in range(8)] + [str(i) for i in range(100, 108)]
    finally:
        try:
            client.communicate("\n", timeout=60)
        except subprocess.TimeoutExpired:
            client.kill()
            client.communicate()
    assert client.returncode == 0
