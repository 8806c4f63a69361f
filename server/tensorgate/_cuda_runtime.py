"""The few CUDA runtime calls the server makes, through ctypes: CUDA shared memory's
(IPC mapping, copies) and the batch buffers' page-locked host memory (runtime/gpu.py).

Loaded by ``load()`` at the first CUDA registration, never at import: a CPU server
pays nothing and needs no CUDA package. libcudart is looked for where the
nvidia-cuda-runtime wheels put it (the same copy onnxruntime-gpu loads), then where the
dynamic loader finds it; the region size check uses the driver (libcuda.so.1), which
every machine with an NVIDIA GPU has.

Why ctypes and not cuda-bindings: seven calls with plain C signatures, and no new
dependency for a server that mostly runs without a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os

import numpy as np

HANDLE_SIZE = 64  # sizeof(cudaIpcMemHandle_t)
_IPC_LAZY_ENABLE_PEER_ACCESS = 1  # cudaIpcMemLazyEnablePeerAccess
_HOST_TO_DEVICE = 1  # cudaMemcpyHostToDevice
_DEVICE_TO_HOST = 2  # cudaMemcpyDeviceToHost
_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")


class RuntimeMissing(Exception):
    """No CUDA runtime library could be loaded; the message says where it looked."""


class CudaError(Exception):
    """A CUDA call failed: the call, the error's number, name and description."""

    def __init__(self, call: str, code: int, name: str, text: str) -> None:
        super().__init__(f"{call}: {name} ({code}): {text}")
        self.call = call
        self.code = code
        self.name = name


class _IpcMemHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_char * HANDLE_SIZE)]


def _wheel_dirs() -> list[str]:
    """The lib folders of the nvidia-cuda-runtime wheels (CUDA 12: nvidia/cuda_runtime;
    CUDA 13: nvidia/cu13), where present."""
    dirs = []
    for package, sub in (("nvidia.cu13", "lib"), ("nvidia.cuda_runtime", "lib")):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(root, sub)
            if os.path.isdir(path):
                dirs.append(path)
    return dirs


def _candidates() -> list[str]:
    paths = []
    for folder in _wheel_dirs():
        paths += [os.path.join(folder, n) for n in _NAMES if os.path.exists(os.path.join(folder, n))]
    found = ctypes.util.find_library("cudart")
    if found:
        paths.append(found)
    return paths + list(_NAMES)


def load() -> "Runtime":
    """The CUDA runtime, or RuntimeMissing naming what was tried."""
    tried = []
    for path in _candidates():
        try:
            return Runtime(ctypes.CDLL(path))
        except OSError:
            tried.append(path)
    raise RuntimeMissing(
        "no CUDA runtime (libcudart) on this server; tried " + ", ".join(dict.fromkeys(tried))
    )


_shared: "Runtime | RuntimeMissing | None" = None


def shared() -> "Runtime":
    """``load()``'s runtime, loaded once per process (a failure is kept, and raised
    again: the library does not appear while the server runs)."""
    global _shared
    if _shared is None:
        try:
            _shared = load()
        except RuntimeMissing as exc:
            _shared = exc
    if isinstance(_shared, RuntimeMissing):
        raise _shared
    return _shared


class Runtime:
    """CUDA runtime calls on device pointers, each raising CudaError on failure."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        lib.cudaGetErrorName.restype = ctypes.c_char_p
        lib.cudaGetErrorName.argtypes = [ctypes.c_int]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        lib.cudaGetErrorString.argtypes = [ctypes.c_int]
        lib.cudaGetDeviceCount.argtypes = [ctypes.POINTER(ctypes.c_int)]
        lib.cudaSetDevice.argtypes = [ctypes.c_int]
        lib.cudaIpcOpenMemHandle.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), _IpcMemHandle, ctypes.c_uint
        ]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.cudaHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                      ctypes.c_uint]
        lib.cudaFreeHost.argtypes = [ctypes.c_void_p]
        for fn in ("cudaGetDeviceCount", "cudaSetDevice", "cudaIpcOpenMemHandle",
                   "cudaIpcCloseMemHandle", "cudaMemcpy", "cudaHostAlloc", "cudaFreeHost"):
            getattr(lib, fn).restype = ctypes.c_int
        self._driver = None  # libcuda, for the size of an allocation (loaded when needed)

    def _check(self, call: str, code: int) -> None:
        if code != 0:
            lib = self._lib
            name = (lib.cudaGetErrorName(code) or b"?").decode()
            text = (lib.cudaGetErrorString(code) or b"").decode()
            raise CudaError(call, code, name, text)

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        self._check("cudaGetDeviceCount", self._lib.cudaGetDeviceCount(ctypes.byref(count)))
        return count.value

    def _set_device(self, device_id: int) -> None:
        self._check("cudaSetDevice", self._lib.cudaSetDevice(device_id))

    def open(self, handle: bytes, device_id: int) -> int:
        """Map another process's allocation (its cudaIpcMemHandle_t) on ``device_id``;
        the device pointer."""
        if len(handle) != HANDLE_SIZE:
            raise ValueError(f"a cudaIpcMemHandle_t is {HANDLE_SIZE} bytes, not {len(handle)}")
        self._set_device(device_id)
        raw = _IpcMemHandle()
        ctypes.memmove(raw.reserved, handle, HANDLE_SIZE)
        pointer = ctypes.c_void_p()
        self._check("cudaIpcOpenMemHandle", self._lib.cudaIpcOpenMemHandle(
            ctypes.byref(pointer), raw, _IPC_LAZY_ENABLE_PEER_ACCESS))
        return pointer.value or 0

    def allocation_size(self, device_id: int, pointer: int) -> int:
        """Bytes from ``pointer`` to the end of its allocation (cuMemGetAddressRange)."""
        if self._driver is None:
            driver = ctypes.CDLL("libcuda.so.1")
            driver.cuMemGetAddressRange_v2.argtypes = [
                ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64
            ]
            driver.cuMemGetAddressRange_v2.restype = ctypes.c_int
            self._driver = driver
        self._set_device(device_id)
        base = ctypes.c_uint64(0)
        size = ctypes.c_size_t(0)
        code = self._driver.cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size), pointer)
        if code != 0:
            raise CudaError("cuMemGetAddressRange", code, "CUresult", f"error {code}")
        return base.value + size.value - pointer

    def read(self, device_id: int, pointer: int, nbytes: int) -> np.ndarray:
        """``nbytes`` bytes from device memory, copied into a new host array (uint8)."""
        out = np.empty(nbytes, dtype=np.uint8)
        if nbytes:
            self._set_device(device_id)
            self._check("cudaMemcpy", self._lib.cudaMemcpy(
                out.ctypes.data, pointer, nbytes, _DEVICE_TO_HOST))
        return out

    def write(self, device_id: int, pointer: int, data: memoryview) -> None:
        """Copy host bytes ``data`` to device memory at ``pointer``."""
        if not data.nbytes:
            return
        host = np.frombuffer(data, dtype=np.uint8)  # no copy; read-only buffers too
        self._set_device(device_id)
        self._check("cudaMemcpy", self._lib.cudaMemcpy(
            pointer, host.ctypes.data, host.nbytes, _HOST_TO_DEVICE))

    def host_alloc(self, nbytes: int) -> int:
        """Page-locked host memory (cudaHostAlloc, default flags): its address."""
        pointer = ctypes.c_void_p()
        self._check("cudaHostAlloc", self._lib.cudaHostAlloc(
            ctypes.byref(pointer), max(nbytes, 1), 0))
        return pointer.value or 0

    def free_host(self, address: int) -> None:
        self._check("cudaFreeHost", self._lib.cudaFreeHost(ctypes.c_void_p(address)))

    def close(self, device_id: int, pointer: int) -> None:
        self._set_device(device_id)
        self._check("cudaIpcCloseMemHandle", self._lib.cudaIpcCloseMemHandle(pointer))
