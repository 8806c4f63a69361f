"""The shared-memory registry on its own: a region's lifetime against the arrays taken
from it, and copies for work that outlives a request."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from tensorgate.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from tensorgate.shared_memory import SystemSharedMemory, write_output


@pytest.fixture
def shm_object():
    key = f"/tg_unit_{uuid.uuid4().hex[:8]}"
    path = "/dev/shm" + key
    with open(path, "wb") as f:
        f.write(np.arange(16, dtype=np.float32).tobytes())
    yield key, path
    os.unlink(path)


def _params(region, byte_size, offset=0):
    return {"shared_memory_region": region, "shared_memory_byte_size": byte_size,
            "shared_memory_offset": offset}


def test_an_array_outlives_the_unregistered_region(shm_object):
    key, _ = shm_object
    registry = SystemSharedMemory(allowed=True)
    registry.register("r", key, 0, 64)
    arr = np.frombuffer(registry.input_bytes("INPUT0", _params("r", 32, 16)), np.float32)
    registry.unregister("r")  # a request still holds arr: unmapped when it lets go
    np.testing.assert_array_equal(arr, np.arange(4, 12, dtype=np.float32))
    assert registry.status() == []
    with pytest.raises(InvalidArgument, match="Unable to find shared memory region: 'r'"):
        registry.input_bytes("INPUT0", _params("r", 32))


def test_inputs_are_copies_the_client_may_reuse_its_region(shm_object):
    """Inputs are read with pread, not viewed through a mapping (a mapping faults with
    SIGBUS when the client truncates the object while a model reads it: found by
    bench/fuzz_scale.py), so work that outlives the request (observers: drift, the
    prediction log; shadow runs) keeps its inputs without copying them again."""
    key, path = shm_object
    registry = SystemSharedMemory(allowed=True)
    registry.register("r", key, 0, 64)
    in_shm = np.frombuffer(registry.input_bytes("A", _params("r", 64)), np.float32).reshape(4, 4)
    with open(path, "r+b") as f:  # the client reuses its region
        f.write(b"\xff" * 64)
    np.testing.assert_array_equal(in_shm.reshape(-1), np.arange(16, dtype=np.float32))
    registry.close()


def test_a_cut_object_is_refused_on_read_and_write(shm_object):
    key, path = shm_object
    registry = SystemSharedMemory(allowed=True)
    registry.register("r", key, 0, 64)
    span = registry.output_span("OUT", _params("r", 16, 32))  # checked: fits now
    os.truncate(path, 40)
    with pytest.raises(InvalidArgument, match="now holds 40 bytes, fewer than the 64"):
        registry.input_bytes("A", _params("r", 16))
    with pytest.raises(InvalidArgument, match="now holds 40 bytes"):
        write_output(("OUT", "INT32", (1, 4), np.arange(4, dtype=np.int32)), span)
    registry.close()


def test_an_unregistered_region_closes_its_descriptor_after_the_last_output(shm_object):
    key, path = shm_object
    registry = SystemSharedMemory(allowed=True)
    registry.register("r", key, 0, 64)
    fd = registry.regions["r"].fd
    span = registry.output_span("OUT", _params("r", 16))
    registry.unregister("r")
    os.fstat(fd)  # still open: an output is still to be written
    write_output(("OUT", "INT32", (1, 4), np.array([9, 9, 9, 9], np.int32)), span)
    del span
    with pytest.raises(OSError):
        os.fstat(fd)
    with open(path, "rb") as f:
        assert np.frombuffer(f.read()[:16], np.int32).tolist() == [9, 9, 9, 9]


def test_outputs_are_written_in_place(shm_object):
    key, path = shm_object
    registry = SystemSharedMemory(allowed=True)
    registry.register("r", key, 16, 48)
    span = registry.output_span("OUT", _params("r", 16, 32))
    entry = write_output(("OUT", "INT32", (1, 4), np.array([[1, 2, 3, 4]], np.int32)), span)
    assert entry == ("OUT", "INT32", (1, 4), b"")
    registry.close()
    with open(path, "rb") as f:
        data = f.read()
    assert np.frombuffer(data[48:64], np.int32).tolist() == [1, 2, 3, 4]


def test_disabled_registry_refuses_changes_but_reports_status():
    registry = SystemSharedMemory(allowed=False)
    assert registry.status() == []
    with pytest.raises(Unimplemented, match="--allow-client-shm=true"):
        registry.register("r", "/x", 0, 8)
    with pytest.raises(Unimplemented):
        registry.unregister()


def test_cuda_region_names_are_taken_for_system_regions(shm_object):
    """One namespace, as Triton's (cuda_shared_memory.CudaSharedMemory sets cuda_names)."""
    key, _ = shm_object
    registry = SystemSharedMemory(allowed=True)
    registry.cuda_names = {"gpu"}
    with pytest.raises(AlreadyExists, match="^shared memory region 'gpu' already in manager$"):
        registry.register("gpu", key, 0, 64)
    with pytest.raises(NotFound, match="^The region named 'gpu' is registered as CUDA shared "
                                       "memory, not system shared memory$"):
        registry.status("gpu")
    with pytest.raises(NotFound, match="Unable to find system shared memory region: 'x'"):
        registry.status("x")
