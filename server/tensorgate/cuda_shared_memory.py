"""CUDA shared memory: GPU regions a client on the same host registers, and the tensors
read from and written to them (the v2 protocol's CUDA shared-memory extension).

A client allocates device memory, exports it (``cudaIpcGetMemHandle``: 64 bytes) and
registers it by name with the handle, its device and its byte size; inputs and outputs
then name the region through the same parameters as system shared memory
(``shared_memory_region``, ``shared_memory_byte_size``, ``shared_memory_offset``). This is
what tritonclient's ``utils.cuda_shared_memory`` and ``perf_analyzer --shared-memory
cuda`` do. Names are one namespace with system regions, as in Triton.

The server maps the handle (``cudaIpcOpenMemHandle``) at registration; an input is
copied device-to-host into a new array (the models run on onnxruntime's host inputs), an
output host-to-device into the region. Off unless ``--allow-client-shm``, like system
shared memory. Without a CUDA runtime or device, registration is refused with what is
missing; status and unregister work as on a GPU server (nothing is registered).

Lifetimes: a region holds its mapping; unregistering a region in use takes it out of the
registry at once and closes the mapping (``cudaIpcCloseMemHandle``) when the last
request that will write an output into it is done (as ``shared_memory.Region``).
"""

from __future__ import annotations

import logging
import weakref

import numpy as np

from tensorgate import _cuda_runtime
from tensorgate.errors import (
    InvalidArgument, NotFound, RuntimeFailure, Unimplemented,
)
from tensorgate.shared_memory import (
    DISABLED, REGION, SystemSharedMemory, _tensor_params, check_registration, check_span,
)

log = logging.getLogger("tensorgate.cuda_shared_memory")

HANDLE_SIZE = _cuda_runtime.HANDLE_SIZE


def _close(runtime, device_id: int, pointer: int, name: str) -> None:
    try:
        runtime.close(device_id, pointer)
    except Exception as exc:  # a finalizer: log, never raise
        log.error("CUDA shared memory region %s: closing its mapping failed: %s", name, exc)


class CudaRegion:
    """One registered region: ``byte_size`` bytes at ``pointer`` on ``device_id``."""

    __slots__ = ("name", "device_id", "byte_size", "pointer", "runtime", "__weakref__")

    def __init__(self, name: str, device_id: int, byte_size: int, pointer: int,
                 runtime) -> None:
        self.name = name
        self.device_id = device_id
        self.byte_size = byte_size
        self.pointer = pointer
        self.runtime = runtime
        # Closed when the last reference goes: the registry's, or an output still to be
        # written (a CudaOutputSpan), so a write never reaches an unmapped address.
        weakref.finalize(self, _close, runtime, device_id, pointer, name)

    def _check(self, offset: int, byte_size: int) -> int:
        """The device address of a tensor's bytes, checked in Triton's words."""
        check_span(self.name, self.byte_size, offset, byte_size)
        return self.pointer + offset

    def read(self, offset: int, byte_size: int) -> np.ndarray:
        address = self._check(offset, byte_size)
        try:
            return self.runtime.read(self.device_id, address, byte_size)
        except _cuda_runtime.CudaError as exc:
            raise _copy_failed(self.name, "reading an input", exc) from None

    def span(self, offset: int, byte_size: int) -> "CudaOutputSpan":
        return CudaOutputSpan(self, self._check(offset, byte_size), byte_size)

    def status(self) -> dict:
        return {"name": self.name, "device_id": self.device_id, "byte_size": self.byte_size}


def _copy_failed(name: str, what: str, exc: _cuda_runtime.CudaError) -> RuntimeFailure:
    log.error("CUDA shared memory region %s: %s failed: %s", name, what, exc)
    return RuntimeFailure(
        f"CUDA shared memory region '{name}': {what} failed ({exc.call}: {exc.name})"
    )


class CudaOutputSpan:
    """Where one output goes: ``nbytes`` bytes at device address ``start`` (the same
    two members ``shared_memory.write_output`` uses of an ``OutputSpan``)."""

    __slots__ = ("region", "start", "nbytes")

    def __init__(self, region: CudaRegion, start: int, nbytes: int) -> None:
        self.region = region
        self.start = start
        self.nbytes = nbytes

    def write(self, raw: memoryview) -> None:
        region = self.region
        try:
            region.runtime.write(region.device_id, self.start, raw)
        except _cuda_runtime.CudaError as exc:
            raise _copy_failed(region.name, "writing an output", exc) from None


class CudaSharedMemory:
    """The registry of CUDA shared-memory regions, shared by every front end.

    ``system``: the server's system registry (its switch, and its names: one namespace).
    ``runtime``: the CUDA runtime binding (``_cuda_runtime.Runtime``'s methods); None
    loads the real one at the first registration.
    """

    def __init__(self, system: SystemSharedMemory, runtime=None) -> None:
        self.system = system
        self.regions: dict[str, CudaRegion] = {}
        self._runtime = runtime
        # The system registry refuses (and reports) these names too: one namespace.
        system.cuda_names = self.regions

    @property
    def allowed(self) -> bool:
        return self.system.allowed

    def _load(self, name: str):
        """The runtime, checked to see a device; the refusal says what is missing."""
        runtime = self._runtime
        if runtime is None:
            try:
                runtime = _cuda_runtime.shared()
            except _cuda_runtime.RuntimeMissing as exc:
                raise _gpus_not_supported(name, str(exc)) from None
        try:
            count = runtime.device_count()
        except _cuda_runtime.CudaError as exc:
            raise _gpus_not_supported(
                name, f"no CUDA device ({exc})"
            ) from None
        if count < 1:
            raise _gpus_not_supported(name, "no CUDA device (cudaGetDeviceCount: 0)")
        self._runtime = runtime
        return runtime, count

    # -- the extension's three calls -----------------------------------------------

    def register(self, name: str, raw_handle: bytes, device_id: int, byte_size: int
                 ) -> CudaRegion:
        check_registration(self.allowed, name, (self.regions, self.system.regions),
                           len(self.regions), "device_id", device_id, byte_size, "CUDA ")
        if not isinstance(raw_handle, (bytes, bytearray)) or len(raw_handle) != HANDLE_SIZE:
            size = len(raw_handle) if isinstance(raw_handle, (bytes, bytearray)) else None
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': 'raw_handle' must be a "
                f"cudaIpcMemHandle_t ({HANDLE_SIZE} bytes), got "
                + (f"{size} bytes" if size is not None else type(raw_handle).__name__)
            )
        runtime, count = self._load(name)
        if device_id >= count:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': invalid args "
                f"(device_id {device_id}; this server sees {count} CUDA device(s))"
            )
        try:
            pointer = runtime.open(bytes(raw_handle), device_id)
        except _cuda_runtime.CudaError as exc:
            log.warning("CUDA shared memory region %s: %s", name, exc)
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': invalid args "
                f"(cudaIpcOpenMemHandle on device {device_id}: {exc.name})"
            ) from None
        try:
            size = runtime.allocation_size(device_id, pointer)
        except Exception as exc:
            _close(runtime, device_id, pointer, name)
            log.error("CUDA shared memory region %s: size unknown: %s", name, exc)
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': invalid args (the "
                "size of its allocation could not be read)"
            ) from None
        if byte_size > size:
            _close(runtime, device_id, pointer, name)
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': invalid args "
                f"(byte_size {byte_size} > the allocation's {size} bytes)"
            )
        region = CudaRegion(name, device_id, byte_size, pointer, runtime)  # owns the mapping
        self.regions[name] = region
        log.info("CUDA shared memory region %s registered: device %d, %d bytes",
                 name, device_id, byte_size)
        return region

    def unregister(self, name: str = "") -> None:
        """Unregister one region, or every CUDA region when ``name`` is empty; an
        unknown name (or a system region's) is not an error, as in Triton."""
        if not self.allowed:
            raise Unimplemented(DISABLED)
        names = [name] if name else list(self.regions)
        for each in names:
            if self.regions.pop(each, None) is not None:  # unmapped with the last reference
                log.info("CUDA shared memory region %s unregistered", each)

    def status(self, name: str = "") -> list[dict]:
        if not name:
            return [r.status() for r in self.regions.values()]
        region = self.regions.get(name)
        if region is None:
            if name in self.system.regions:
                raise NotFound(
                    f"The region named '{name}' is registered as system shared memory, "
                    "not CUDA shared memory"
                )
            raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
        return [region.status()]

    def close(self) -> None:
        self.regions.clear()

    # -- tensors (system and CUDA regions: the registry the data plane consults) --------

    def _cuda_region(self, params) -> CudaRegion | None:
        region = params[REGION] if REGION in params else None
        return self.regions.get(region) if isinstance(region, str) else None

    def input_bytes(self, tensor: str, params):
        """The bytes of an input that names a region, system or CUDA (a copy)."""
        region = self._cuda_region(params)
        if region is None:
            return self.system.input_bytes(tensor, params)
        _, offset, byte_size = _tensor_params(params, tensor)
        return region.read(offset, byte_size)

    def output_span(self, tensor: str, params):
        """Where an output that names a region goes, system or CUDA (checked before the
        model runs)."""
        region = self._cuda_region(params)
        if region is None:
            return self.system.output_span(tensor, params)
        _, offset, byte_size = _tensor_params(params, tensor)
        return region.span(offset, byte_size)


def _gpus_not_supported(name: str, why: str) -> InvalidArgument:
    """Triton's refusal on a server without GPUs (INVALID_ARGUMENT), saying why."""
    return InvalidArgument(
        f"failed to register CUDA shared memory region: '{name}', GPUs not supported: {why}"
    )
