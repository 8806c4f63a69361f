"""Make the optimised model: ONNX Runtime's dynamic quantisation, or half precision with
onnxconverter-common. Blocking; files in, bytes out."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

METHODS = ("int8-dynamic", "fp16")
WEIGHT_TYPES = ("qint8", "quint8")


class ConversionError(Exception):
    """The converter refused the model (its message says why)."""


class _QuietPreprocessHint(logging.Filter):
    """quantize_dynamic logs a hint on the root logger on every call (run the shape
    pre-processing first); dynamic quantisation needs no calibration, and the hint is
    noise in our output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def int8_dynamic(source: Path, weight_type: str = "qint8", per_channel: bool = False,
                 op_types: tuple[str, ...] = ()) -> bytes:
    """Weights stored as 8-bit integers, activations quantised at run time (MatMul,
    Gemm, Conv, attention-like ops: onnxruntime.quantization.quantize_dynamic);
    ``op_types`` limits it to those operator types (e.g. MatMul, Gemm: ConvInteger is
    slow on many CPUs)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    wtype = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[weight_type]
    quiet = _QuietPreprocessHint()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="tensorgate-optimize-") as tmp:
            out = Path(tmp) / "model.onnx"
            try:
                quantize_dynamic(str(source), str(out), weight_type=wtype,
                                 per_channel=per_channel,
                                 op_types_to_quantize=list(op_types) or None)
            except Exception as exc:  # the quantiser raises whatever it meets
                raise ConversionError(f"quantize_dynamic failed: {exc}") from None
            return out.read_bytes()
    finally:
        root.removeFilter(quiet)


def fp16(source: Path) -> bytes:
    """Float tensors (weights and activations) in half precision; inputs and outputs
    keep their types (keep_io_types), so clients and config.pbtxt stay as they are."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(source))
    ir_version = model.ir_version
    try:
        with warnings.catch_warnings():
            # One warning per weight below float16's range (flushed to 1e-7): thousands
            # for a real model; the measured difference says what they cost.
            warnings.filterwarnings("ignore", message=".*will be truncated to")
            converted = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # the converter raises whatever it meets
        raise ConversionError(f"convert_float_to_float16 failed: {exc}") from None
    _cast_to_half(converted)
    # The runtime reads IR versions up to what it knows; never raise the original's.
    converted.ir_version = min(converted.ir_version, ir_version)
    return converted.SerializeToString()


def _cast_to_half(model) -> None:
    """The converter declares a Cast-to-float's output float16 (its value_info) but
    leaves the Cast's ``to`` at float, which ONNX Runtime refuses (a mask cast from
    integers, say): make those Casts produce float16 as declared."""
    from onnx import TensorProto, helper

    declared = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type != "Cast" or declared.get(node.output[0]) != TensorProto.FLOAT16:
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.CopyFrom(helper.make_attribute("to", TensorProto.FLOAT16))


def convert(source: Path, method: str, weight_type: str = "qint8",
            per_channel: bool = False, op_types: tuple[str, ...] = ()) -> bytes:
    if method == "int8-dynamic":
        return int8_dynamic(source, weight_type, per_channel, op_types)
    if method == "fp16":
        return fp16(source)
    raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
