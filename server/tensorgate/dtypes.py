"""The datatype tables: v2 wire names, Triton config enums, ONNX types, numpy dtypes.

Built once at import; everything per request looks values up here by string.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    wire: str  # v2 protocol datatype string, e.g. "FP32"
    config: str  # inference.DataType enum name, e.g. "TYPE_FP32"
    onnx: str  # onnxruntime NodeArg.type, e.g. "tensor(float)"
    numpy: np.dtype  # numpy dtype used on the wire (little-endian); object for BYTES
    typed_field: str | None  # InferTensorContents field for typed contents

    @property
    def itemsize(self) -> int:
        """Bytes per element in raw contents; 0 for BYTES (variable length)."""
        return 0 if self.wire == "BYTES" else self.numpy.itemsize


_ALL = [
    DType("BOOL", "TYPE_BOOL", "tensor(bool)", np.dtype(np.bool_), "bool_contents"),
    DType("UINT8", "TYPE_UINT8", "tensor(uint8)", np.dtype("<u1"), "uint_contents"),
    DType("UINT16", "TYPE_UINT16", "tensor(uint16)", np.dtype("<u2"), "uint_contents"),
    DType("UINT32", "TYPE_UINT32", "tensor(uint32)", np.dtype("<u4"), "uint_contents"),
    DType("UINT64", "TYPE_UINT64", "tensor(uint64)", np.dtype("<u8"), "uint64_contents"),
    DType("INT8", "TYPE_INT8", "tensor(int8)", np.dtype("<i1"), "int_contents"),
    DType("INT16", "TYPE_INT16", "tensor(int16)", np.dtype("<i2"), "int_contents"),
    DType("INT32", "TYPE_INT32", "tensor(int32)", np.dtype("<i4"), "int_contents"),
    DType("INT64", "TYPE_INT64", "tensor(int64)", np.dtype("<i8"), "int64_contents"),
    DType("FP16", "TYPE_FP16", "tensor(float16)", np.dtype("<f2"), None),
    DType("FP32", "TYPE_FP32", "tensor(float)", np.dtype("<f4"), "fp32_contents"),
    DType("FP64", "TYPE_FP64", "tensor(double)", np.dtype("<f8"), "fp64_contents"),
    DType("BYTES", "TYPE_STRING", "tensor(string)", np.dtype(object), "bytes_contents"),
]

BY_WIRE: dict[str, DType] = {d.wire: d for d in _ALL}
BY_CONFIG: dict[str, DType] = {d.config: d for d in _ALL}
BY_ONNX: dict[str, DType] = {d.onnx: d for d in _ALL}
