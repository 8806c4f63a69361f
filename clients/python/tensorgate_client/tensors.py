"""numpy arrays to and from v2 wire tensors: datatype names and raw contents.

Raw contents are a tensor's elements, row-major, little-endian. A BYTES tensor's raw
contents are its elements in order, each a 4-byte little-endian length followed by that
many bytes (the form Triton and tritonclient use). The functions here are pure and raise
``TypeError`` / ``ValueError``; the message converters turn a bad response into a
``TensorGateError``.
"""

from __future__ import annotations

import math
import struct

import numpy as np

# v2 datatype -> numpy dtype of its raw contents; BYTES is variable-length (object).
_NUMPY_OF: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
# (kind, itemsize) of a numpy dtype -> v2 datatype, whatever its byte order.
_DATATYPE_OF: dict[tuple[str, int], str] = {
    (dt.kind, dt.itemsize): name for name, dt in _NUMPY_OF.items() if name != "BYTES"
}
_LENGTH = struct.Struct("<I")

DATATYPES = tuple(_NUMPY_OF)


def datatype_of(dtype: np.dtype) -> str:
    """The v2 datatype for a numpy dtype: ``float32`` -> ``"FP32"``; object, bytes and
    str arrays -> ``"BYTES"``."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_OF[(dtype.kind, dtype.itemsize)]
    except KeyError:
        raise TypeError(f"numpy dtype {dtype} has no v2 datatype") from None


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype a v2 datatype decodes to (object for BYTES)."""
    try:
        return _NUMPY_OF[datatype]
    except KeyError:
        raise ValueError(f"unknown v2 datatype {datatype!r}") from None


def encode(array: np.ndarray) -> tuple[str, bytes]:
    """``(datatype, raw contents)`` for an array."""
    datatype = datatype_of(array.dtype)
    if datatype == "BYTES":
        return datatype, serialize_bytes(array)
    # One copy, into little-endian row-major order (none needed to reorder on x86 when
    # the array is already C-contiguous).
    return datatype, np.ascontiguousarray(array, dtype=_NUMPY_OF[datatype]).tobytes()


def decode(datatype: str, shape, raw: bytes) -> np.ndarray:
    """The array for raw contents. Numeric arrays are read-only views of ``raw`` (no
    copy); ``.copy()`` one to write into it."""
    shape = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, shape)
    dtype = numpy_dtype(datatype)
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{datatype} {list(shape)} needs {expected} bytes of raw contents, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _element_bytes(item) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("utf-8")
    # bytes(5) would silently make five zero bytes: refuse anything else.
    raise TypeError(f"a BYTES element must be bytes or str, not {type(item).__name__}")


def serialize_bytes(array: np.ndarray) -> bytes:
    """Raw contents of a BYTES tensor: per element (row-major) a 4-byte little-endian
    length, then the bytes. str elements are written as UTF-8."""
    parts: list[bytes] = []
    for item in np.asarray(array, dtype=object).reshape(-1):
        data = _element_bytes(item)
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes, shape) -> np.ndarray:
    """A numpy object array of ``bytes`` from a BYTES tensor's raw contents."""
    shape = tuple(int(d) for d in shape)
    count = math.prod(shape)
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    offset, size = 0, len(raw)
    for i in range(count):
        if offset + 4 > size:
            raise ValueError(f"BYTES contents end inside the length of element {i}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > size:
            raise ValueError(f"BYTES element {i} of {length} bytes runs past the contents")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise ValueError(f"{size - offset} bytes left after {count} BYTES elements")
    return out.reshape(shape)
