"""System shared memory: regions a client on the same host registers, and the tensors
read from and written to them (the v2 protocol's shared-memory extension).

A client creates a POSIX shared-memory object (``shm_open``: a file in /dev/shm),
registers a region of it by name (key, offset, byte size), then names the region in an
input's or output's parameters: ``shared_memory_region``, ``shared_memory_byte_size``
and optionally ``shared_memory_offset`` (within the region). Inputs are read from the
object with pread (one copy) and outputs written into it with pwrite; the response
carries only the outputs' name, datatype and shape. This is what tritonclient's
``utils.shared_memory`` and ``perf_analyzer --shared-memory system`` do.

Off unless ``--allow-client-shm`` (as in Triton, where it is off by default too): a
region lets a caller make the server read and write a file it maps.

Why not a mapping: a client that truncates the object while a request reads or writes
it through a mmap makes the access fault, and SIGBUS ends the server. Checking the size
first does not close that window: the model reads its inputs later, on another thread
(bench/fuzz_scale.py cut the object every 20 ms under load and killed the server within
seconds, inputs and outputs alike). pread and pwrite cannot fault: a short read is
refused, and a write past a cut end lands in the file.

Lifetimes: a region holds a descriptor of the object; unregistering a region in use takes
it out of the registry at once and closes the descriptor when the last request that
will write an output into it is done.
"""

from __future__ import annotations

import logging
import os
import stat
import weakref
from collections.abc import Container

import numpy as np

from tensorgate.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented

log = logging.getLogger("tensorgate.shared_memory")

SHM_DIR = "/dev/shm"  # where glibc's shm_open keeps POSIX shared-memory objects
MAX_REGIONS = 1024  # each mapping holds a file descriptor
REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"
DISABLED = (
    "Client shared memory is disabled. Start the server with '--allow-client-shm=true' "
    "to enable."
)


def uses_shared_memory(params) -> bool:
    """Whether a tensor's parameters name shared memory (any of the three keys, so that
    a half-given set is refused by ``_tensor_params`` rather than ignored)."""
    return bool(params) and (REGION in params or BYTE_SIZE in params or OFFSET in params)


def _int_param(params, key: str, tensor: str) -> int:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"invalid value type for '{key}' parameter for tensor '{tensor}', expected "
            f"int64_param."
        )
    if value < 0:
        raise InvalidArgument(f"'{key}' parameter for tensor '{tensor}' is negative ({value})")
    return value


def _tensor_params(params, tensor: str) -> tuple[str, int, int]:
    """(region, offset, byte size) from a tensor's parameters, in Triton's words."""
    if REGION not in params:
        key = OFFSET if OFFSET in params else BYTE_SIZE
        raise InvalidArgument(
            f"'{key}' can not be specified without 'shared_memory_region' parameter for "
            f"tensor '{tensor}'"
        )
    region = params[REGION]
    if not isinstance(region, str):
        raise InvalidArgument(
            f"invalid value type for 'shared_memory_region' parameter for tensor "
            f"'{tensor}', expected string_param."
        )
    if BYTE_SIZE not in params:
        raise InvalidArgument(
            f"'shared_memory_byte_size' must be specified along with "
            f"'shared_memory_region' parameter for tensor '{tensor}'"
        )
    offset = _int_param(params, OFFSET, tensor) if OFFSET in params else 0
    return region, offset, _int_param(params, BYTE_SIZE, tensor)


def _object_name(name: str, key: str) -> str:
    """The file name in /dev/shm that ``shm_open(key)`` opens: leading slashes dropped,
    then one plain name (no further slash, not . or ..), as glibc requires."""
    stem = key.lstrip("/")
    if not stem or "/" in stem or stem in (".", "..") or "\0" in stem or len(stem) > 255:
        raise InvalidArgument(
            f"cannot register shared memory region '{name}' - invalid shm key '{key}' "
            f"(a POSIX shared-memory name: '/' and one plain file name)"
        )
    return stem


class Region:
    """One registered region: ``byte_size`` bytes from ``offset`` in the object ``key``."""

    __slots__ = ("name", "key", "offset", "byte_size", "fd", "__weakref__")

    def __init__(self, name: str, key: str, offset: int, byte_size: int, fd: int) -> None:
        self.name = name
        self.key = key
        self.offset = offset
        self.byte_size = byte_size
        self.fd = fd
        # Closed when the last reference goes: the registry's, or an output still to be
        # written (an OutputSpan), so a write never reaches a descriptor reused since.
        weakref.finalize(self, os.close, fd)

    def _check(self, offset: int, byte_size: int) -> int:
        """The object's position of a tensor's bytes (offset within this region), checked
        in Triton's words against the region and against the object's size now."""
        check_span(self.name, self.byte_size, offset, byte_size)
        self._check_size(os.fstat(self.fd).st_size)
        return self.offset + offset

    def _check_size(self, size: int) -> None:
        end = self.offset + self.byte_size
        if size < end:
            raise InvalidArgument(
                f"shared memory region '{self.name}': its object '{self.key}' now holds "
                f"{size} bytes, fewer than the {end} registered; register it again"
            )

    def read(self, offset: int, byte_size: int) -> bytes:
        start = self._check(offset, byte_size)
        data = os.pread(self.fd, byte_size, start)
        if len(data) < byte_size:  # cut between the check and the read
            self._check_size(start + len(data))
        return data

    def span(self, offset: int, byte_size: int) -> "OutputSpan":
        return OutputSpan(self, self._check(offset, byte_size), byte_size)

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}


class OutputSpan:
    """Where one output goes: ``nbytes`` bytes at ``start`` in a region's object."""

    __slots__ = ("region", "start", "nbytes")

    def __init__(self, region: Region, start: int, nbytes: int) -> None:
        self.region = region
        self.start = start
        self.nbytes = nbytes

    def write(self, raw: memoryview) -> None:
        region = self.region
        region._check_size(os.fstat(region.fd).st_size)
        done = 0
        while done < raw.nbytes:
            done += os.pwrite(region.fd, raw[done:], self.start + done)


class SystemSharedMemory:
    """The registry of system shared-memory regions, shared by every front end."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.regions: dict[str, Region] = {}
        # The names CUDA regions hold (cuda_shared_memory sets it): one namespace, as Triton's.
        self.cuda_names: Container[str] = ()

    # -- the extension's three calls -----------------------------------------------

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        check_registration(self.allowed, name, (self.regions, self.cuda_names),
                           len(self.regions), "offset", offset, byte_size)
        path = os.path.join(SHM_DIR, _object_name(name, key))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': Unable to open shared "
                f"memory region: '{key}' ({exc.strerror})"
            ) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': '{key}' is not a "
                    "shared-memory object"
                )
            if offset + byte_size > info.st_size:
                raise InvalidArgument(
                    f"failed to register shared memory region '{name}': invalid args "
                    f"(offset {offset} + byte_size {byte_size} > the object's "
                    f"{info.st_size} bytes)"
                )
        except BaseException:
            os.close(fd)
            raise
        region = Region(name, key, offset, byte_size, fd)  # owns fd from here
        self.regions[name] = region
        log.info("shared memory region %s registered: key %s, offset %d, %d bytes",
                 name, key, offset, byte_size)
        return region

    def unregister(self, name: str = "") -> None:
        """Unregister one region, or every region when ``name`` is empty; an unknown
        name is not an error (as Triton)."""
        if not self.allowed:
            raise Unimplemented(DISABLED)
        names = [name] if name else list(self.regions)
        for each in names:
            region = self.regions.pop(each, None)
            if region is not None:  # its descriptor closes with the last reference
                log.info("shared memory region %s unregistered", each)

    def status(self, name: str = "") -> list[dict]:
        if not name:
            return [r.status() for r in self.regions.values()]
        region = self.regions.get(name)
        if region is None:
            if name in self.cuda_names:
                raise NotFound(f"The region named '{name}' is registered as CUDA shared "
                               "memory, not system shared memory")
            raise NotFound(f"Unable to find system shared memory region: '{name}'")
        return [region.status()]

    def close(self) -> None:
        self.regions.clear()

    # -- tensors -------------------------------------------------------------------------

    def _region(self, name: str) -> Region:
        region = self.regions.get(name)
        if region is None:
            if not self.allowed:
                raise InvalidArgument(f"{DISABLED} (a tensor names region '{name}')")
            raise InvalidArgument(f"Unable to find shared memory region: '{name}'")
        return region

    def input_bytes(self, tensor: str, params) -> bytes:
        """The bytes of an input that names a region (read now: a copy)."""
        name, offset, byte_size = _tensor_params(params, tensor)
        return self._region(name).read(offset, byte_size)

    def output_span(self, tensor: str, params) -> OutputSpan:
        """Where an output that names a region goes (checked before the model runs)."""
        name, offset, byte_size = _tensor_params(params, tensor)
        return self._region(name).span(offset, byte_size)


def check_registration(allowed: bool, name: str, taken: tuple, held: int, what: str,
                       value, byte_size, kind: str = "") -> None:
    """What every registration (system or CUDA) checks first, in Triton's words: the
    switch, a name, one namespace (``taken``: the containers of names in use), the bound
    on ``held`` regions, ``what`` (offset or device id) and ``byte_size`` non-negative
    integers, and ``byte_size`` not 0."""
    if not allowed:
        raise Unimplemented(DISABLED)
    if not name:
        raise InvalidArgument("a shared memory region needs a name")
    if any(name in names for names in taken):
        raise AlreadyExists(f"shared memory region '{name}' already in manager")
    if held >= MAX_REGIONS:
        raise InvalidArgument(
            f"failed to register shared memory region '{name}': {MAX_REGIONS} {kind}regions "
            "are registered, the most this server holds; unregister some first"
        )
    for label, number in ((what, value), ("byte_size", byte_size)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 0:
            raise InvalidArgument(
                f"failed to register shared memory region '{name}': {label} must be a "
                f"non-negative integer, got {number!r}"
            )
    if byte_size == 0:
        raise InvalidArgument(f"failed to register shared memory region '{name}': byte_size is 0")


def check_span(name: str, region_size: int, offset: int, byte_size: int) -> None:
    """A tensor's ``byte_size`` bytes at ``offset`` lie inside a region of
    ``region_size`` bytes (Triton's words otherwise)."""
    if offset >= region_size:
        raise InvalidArgument(f"Invalid offset for shared memory region: '{name}'")
    if offset + byte_size > region_size:
        raise InvalidArgument(
            f"Invalid offset + byte size for shared memory region: '{name}' "
            f"(offset {offset} + byte size {byte_size} > the region's {region_size})"
        )


def write_output(entry: tuple, span: OutputSpan) -> tuple:
    """Write one response entry's data (an ndarray, or BYTES' encoding) into ``span``;
    the entry the response carries instead: no data, as Triton answers."""
    name, datatype, shape, data = entry
    raw = memoryview(data).cast("B") if isinstance(data, np.ndarray) else memoryview(data)
    if raw.nbytes > span.nbytes:
        raise InvalidArgument(
            f"shared memory size specified with the request for output '{name}' "
            f"({span.nbytes} bytes) should be at least {raw.nbytes} bytes to hold the results"
        )
    span.write(raw)
    return (name, datatype, shape, b"")
