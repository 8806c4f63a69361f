"""tensorgate optimize's conversions on small graphs: the FP16 result keeps the
inputs' and outputs' types and loads in ONNX Runtime, a mask cast from integers
included; INT8-dynamic quantises a MatMul's weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tensorgate.optimize import convert


def _masked_matmul(path):
    """y = (x * float(mask)) @ W: an integer mask cast to float, as text encoders do."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4))
                                .astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "maskf"], ["xm"]),
         helper.make_node("MatMul", ["xm", "W"], ["y"])],
        "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 8]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["b", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)
    return path


def _run(data: bytes, feed):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_fp16_keeps_io_types_and_fixes_float_casts(tmp_path):
    path = _masked_matmul(tmp_path / "m.onnx")
    half = convert.convert(path, "fp16")
    model = onnx.load_from_string(half)
    assert model.ir_version == 10
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    feed = {"x": np.ones((2, 8), np.float32), "mask": np.ones((2, 8), np.int64)}
    got = _run(half, feed)
    want = _run(path.read_bytes(), feed)
    assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-2


def test_int8_dynamic_quantises_matmul_weights(tmp_path):
    path = _masked_matmul(tmp_path / "m.onnx")
    q = onnx.load_from_string(convert.convert(path, "int8-dynamic"))
    ops = {n.op_type for n in q.graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
