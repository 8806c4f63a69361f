"""The benchmark models, written as one Triton-layout repository every server reads.

Every server in a comparison (TensorGate, the echo server, MLServer, PyTriton, in-process
ONNX Runtime) serves the same ``model.onnx`` files with the same settings: max batch 64,
1 ms batching delay, one instance, one ONNX Runtime intra-op thread.

    python bench/models.py DIR      # writes DIR/tiny_mlp and DIR/convnet
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The same settings every peer gets (see bench/peers/README.md).
MAX_BATCH_SIZE = 64
MAX_QUEUE_DELAY_US = 1000
INTRA_OP_THREADS = 1

OPSET = 17
# onnx >= 1.21 writes IR 14 by default; onnxruntime 1.31 reads at most 13 (PEERS.md).
IR_VERSION = 10
SEED = 20261123


@dataclass(frozen=True)
class BenchModel:
    """One model's wire contract; shapes exclude the batch dimension."""

    name: str
    input_name: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]
    datatype: str = "FP32"


MODELS: dict[str, BenchModel] = {
    "tiny_mlp": BenchModel("tiny_mlp", "INPUT0", (16,), "OUTPUT0", (8,)),
    "convnet": BenchModel("convnet", "INPUT0", (3, 64, 64), "OUTPUT0", (10,)),
}


def _weights(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    # He scaling keeps activations O(1) through the Relus, so outputs are not all zero
    # and value checks against onnxruntime mean something.
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _tiny_mlp(rng: np.random.Generator):
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(_weights(rng, (16, 64), 16), "W1"),
        numpy_helper.from_array(np.zeros(64, np.float32), "B1"),
        numpy_helper.from_array(_weights(rng, (64, 8), 64), "W2"),
        numpy_helper.from_array(np.zeros(8, np.float32), "B2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["INPUT0", "W1", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["a1"]),
        helper.make_node("Gemm", ["a1", "W2", "B2"], ["OUTPUT0"]),
    ]
    inputs = [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])]
    outputs = [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 8])]
    return helper.make_graph(nodes, "tiny_mlp", inputs, outputs, inits)


def _convnet(rng: np.random.Generator):
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(_weights(rng, (16, 3, 3, 3), 27), "C1"),
        numpy_helper.from_array(np.zeros(16, np.float32), "CB1"),
        numpy_helper.from_array(_weights(rng, (32, 16, 3, 3), 144), "C2"),
        numpy_helper.from_array(np.zeros(32, np.float32), "CB2"),
        numpy_helper.from_array(_weights(rng, (32, 10), 32), "W"),
        numpy_helper.from_array(np.zeros(10, np.float32), "B"),
    ]
    conv = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    nodes = [
        helper.make_node("Conv", ["INPUT0", "C1", "CB1"], ["c1"], **conv),  # -> 16x32x32
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "C2", "CB2"], ["c2"], **conv),  # -> 32x16x16
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),  # -> 32x1x1
        helper.make_node("Flatten", ["p"], ["f"], axis=1),  # -> 32
        helper.make_node("Gemm", ["f", "W", "B"], ["OUTPUT0"]),  # -> 10
    ]
    inputs = [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 3, 64, 64])]
    outputs = [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 10])]
    return helper.make_graph(nodes, "convnet", inputs, outputs, inits)


_GRAPHS = {"tiny_mlp": _tiny_mlp, "convnet": _convnet}


def config_pbtxt(model: BenchModel) -> str:
    """Triton config with the batching settings every peer is given."""

    def dims(shape: tuple[int, ...]) -> str:
        return ", ".join(str(d) for d in shape)

    return f"""name: "{model.name}"
platform: "onnxruntime_onnx"
max_batch_size: {MAX_BATCH_SIZE}
input {{
  name: "{model.input_name}"
  data_type: TYPE_{model.datatype}
  dims: [ {dims(model.input_shape)} ]
}}
output {{
  name: "{model.output_name}"
  data_type: TYPE_{model.datatype}
  dims: [ {dims(model.output_shape)} ]
}}
dynamic_batching {{
  max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US}
}}
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
parameters {{
  key: "intra_op_thread_count"
  value: {{ string_value: "{INTRA_OP_THREADS}" }}
}}
"""


def model_path(root: Path, name: str) -> Path:
    return Path(root) / name / "1" / "model.onnx"


def build_bench_repository(root: Path) -> Path:
    """Write ``root/<model>/{config.pbtxt,1/model.onnx}`` for every bench model.

    Deterministic: the same seed gives byte-identical files, so a rebuilt repository
    serves the same numbers.
    """
    import onnx
    from onnx import helper

    root = Path(root)
    for index, (name, spec) in enumerate(MODELS.items()):
        rng = np.random.default_rng([SEED, index])  # one stream per model
        model = helper.make_model(
            _GRAPHS[name](rng),
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="tensorgate-bench",
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        path = model_path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, path)
        (root / name / "config.pbtxt").write_text(config_pbtxt(spec))
    return root


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/models.py DIR", file=sys.stderr)
        return 2
    root = build_bench_repository(Path(argv[0]))
    for name in MODELS:
        print(model_path(root, name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
