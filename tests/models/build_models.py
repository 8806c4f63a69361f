"""Deterministic builders for TensorGate's demo and test model repositories.

Every model is made with ``onnx.helper`` (opset 17, IR version 10, which every
onnxruntime we support accepts) and weights from a fixed-seed numpy generator, so two
runs write identical files and nothing is downloaded. Each model is checked with
``onnx.checker`` and run once in onnxruntime before it is written.

    python tests/models/build_models.py demo server/tensorgate/demo_repository
    python tests/models/build_models.py test /tmp/tensorgate-test-repo

The demo repository is committed (and bundled in the package); the test repository is
built into a temporary directory by the e2e fixtures.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10
SEED = 20240601


@dataclass(frozen=True)
class DType:
    """One tensor datatype as each layer spells it."""

    suffix: str  # identity_<suffix>
    v2: str  # KServe v2 / Triton wire datatype
    config: str  # config.pbtxt data_type
    onnx: int  # TensorProto element type
    numpy: type  # numpy dtype (np.object_ for BYTES)


DTYPES: tuple[DType, ...] = (
    DType("bool", "BOOL", "TYPE_BOOL", TensorProto.BOOL, np.bool_),
    DType("uint8", "UINT8", "TYPE_UINT8", TensorProto.UINT8, np.uint8),
    DType("uint16", "UINT16", "TYPE_UINT16", TensorProto.UINT16, np.uint16),
    DType("uint32", "UINT32", "TYPE_UINT32", TensorProto.UINT32, np.uint32),
    DType("uint64", "UINT64", "TYPE_UINT64", TensorProto.UINT64, np.uint64),
    DType("int8", "INT8", "TYPE_INT8", TensorProto.INT8, np.int8),
    DType("int16", "INT16", "TYPE_INT16", TensorProto.INT16, np.int16),
    DType("int32", "INT32", "TYPE_INT32", TensorProto.INT32, np.int32),
    DType("int64", "INT64", "TYPE_INT64", TensorProto.INT64, np.int64),
    DType("fp16", "FP16", "TYPE_FP16", TensorProto.FLOAT16, np.float16),
    DType("fp32", "FP32", "TYPE_FP32", TensorProto.FLOAT, np.float32),
    DType("fp64", "FP64", "TYPE_FP64", TensorProto.DOUBLE, np.float64),
    DType("bytes", "BYTES", "TYPE_STRING", TensorProto.STRING, np.object_),
)

# Versions on disk for versioned, versioned_all and versioned_specific; version v
# computes OUTPUT0 = INPUT0 + v.
VERSIONS = (1, 2, 3)

FP32 = TensorProto.FLOAT
INT64 = TensorProto.INT64


# --------------------------------------------------------------------------- helpers


def _vi(name: str, elem_type: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _model(
    name: str,
    nodes: list,
    inputs: list,
    outputs: list,
    initializers: list | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tensorgate-tests",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _session(model: onnx.ModelProto, quiet: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 4  # the failure is expected: keep it out of the log
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _smoke(model: onnx.ModelProto, feeds: dict) -> list:
    """Run the model once in onnxruntime; every declared output must come back."""
    outs = _session(model).run(None, feeds)
    assert len(outs) == len(model.graph.output), model.graph.name
    return outs


def _write_model(root: Path, name: str, model: onnx.ModelProto, version: int = 1) -> Path:
    path = root / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def _write_config(root: Path, name: str, text: str) -> None:
    path = root / name / "config.pbtxt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n")


def _tensor_cfg(kind: str, name: str, data_type: str, dims: list) -> str:
    dims_text = ", ".join(str(d) for d in dims)
    return f'{kind} {{\n  name: "{name}"\n  data_type: {data_type}\n  dims: [ {dims_text} ]\n}}\n'


def sample(dtype: DType, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Values spanning the datatype's range (extremes included) for round-trip tests."""
    n = int(np.prod(shape))
    if dtype.numpy is np.bool_:
        values = rng.integers(0, 2, n).astype(np.bool_)
    elif dtype.numpy is np.object_:
        pool = [
            b"",
            b"a",
            b"TensorGate",
            "h\u00e9llo w\u00f6rld".encode(),
            "\u6f22\u5b57".encode(),
            b"with\x00nul",
            b"x" * 300,
            "\U0001f600".encode(),
        ]
        values = np.array([pool[int(i)] for i in rng.integers(0, len(pool), n)], dtype=np.object_)
    elif np.issubdtype(dtype.numpy, np.integer):
        info = np.iinfo(dtype.numpy)
        values = rng.integers(info.min, info.max, n, dtype=dtype.numpy, endpoint=True)
        extremes = np.array([info.min, info.max], dtype=dtype.numpy)[:n]
        values[: len(extremes)] = extremes
    else:
        values = (rng.standard_normal(n) * 1000).astype(dtype.numpy)
        specials = np.array(
            [0.0, -0.0, np.inf, -np.inf, np.finfo(dtype.numpy).tiny, np.finfo(dtype.numpy).max],
            dtype=dtype.numpy,
        )
        k = min(n, len(specials))
        values[:k] = specials[:k]
    return values.reshape(shape)


def ort_feed(array: np.ndarray) -> np.ndarray:
    """What onnxruntime's Python API needs for an array: BYTES elements as str.

    onnxruntime's binding str()s bytes objects ("b'abc'"), so string tensors go in as
    UTF-8-decoded str and come out as str.
    """
    if array.dtype == np.object_:
        return np.array(
            [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel()],
            dtype=np.object_,
        ).reshape(array.shape)
    return array


def ort_result(array: np.ndarray) -> np.ndarray:
    """onnxruntime's output as the v2 protocol carries it: BYTES elements as bytes."""
    if array.dtype == np.object_:
        return np.array(
            [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()],
            dtype=np.object_,
        ).reshape(array.shape)
    return array


def run_onnx(path: Path, feeds: dict) -> dict:
    """Run an ONNX file in-process (the oracle for e2e tests); outputs by name."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {k: ort_feed(v) for k, v in feeds.items()})
    return {n: ort_result(o) for n, o in zip(names, outs, strict=True)}


# --------------------------------------------------------------------------- demo


def _simple_mlp(rng: np.random.Generator) -> onnx.ModelProto:
    w1 = (rng.standard_normal((16, 64)) * 0.25).astype(np.float32)
    b1 = (rng.standard_normal(64) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((64, 8)) * 0.25).astype(np.float32)
    b2 = (rng.standard_normal(8) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["INPUT0", "W1", "B1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
        helper.make_node("Gemm", ["hidden_relu", "W2", "B2"], ["OUTPUT0"]),
    ]
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))
    ]
    model = _model(
        "simple_mlp",
        nodes,
        [_vi("INPUT0", FP32, ["batch", 16])],
        [_vi("OUTPUT0", FP32, ["batch", 8])],
        inits,
    )
    out = _smoke(model, {"INPUT0": rng.standard_normal((3, 16)).astype(np.float32)})
    assert out[0].shape == (3, 8)
    return model


SIMPLE_MLP_CONFIG = (
    'name: "simple_mlp"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 64\n"
    + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [16])
    + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [8])
    + "dynamic_batching {\n  max_queue_delay_microseconds: 200\n}\n"
    "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
    'parameters {\n  key: "intra_op_thread_count"\n  value: { string_value: "1" }\n}\n'
)


def _multi_io() -> onnx.ModelProto:
    zero = numpy_helper.from_array(np.array(0, dtype=np.int32), "ZERO_I32")
    nodes = [
        helper.make_node("Cast", ["FEATURES"], ["features_f64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["COUNTS"], ["counts_f64"], to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["features_f64", "counts_f64"], ["WEIGHTED"]),
        helper.make_node("Cast", ["COUNTS"], ["counts_i32"], to=TensorProto.INT32),
        helper.make_node("Where", ["MASK", "counts_i32", "ZERO_I32"], ["MASKED_COUNTS"]),
        helper.make_node("Cast", ["MASK"], ["mask_i32"], to=TensorProto.INT32),
        helper.make_node("ReduceMax", ["mask_i32"], ["mask_max"], axes=[1], keepdims=1),
        helper.make_node("Greater", ["mask_max", "ZERO_I32"], ["ANY_MASKED"]),
    ]
    model = _model(
        "multi_io",
        nodes,
        [
            _vi("FEATURES", FP32, ["batch", 4]),
            _vi("COUNTS", INT64, ["batch", 4]),
            _vi("MASK", TensorProto.BOOL, ["batch", 4]),
        ],
        [
            _vi("WEIGHTED", TensorProto.DOUBLE, ["batch", 4]),
            _vi("MASKED_COUNTS", TensorProto.INT32, ["batch", 4]),
            _vi("ANY_MASKED", TensorProto.BOOL, ["batch", 1]),
        ],
        [zero],
    )
    feats = np.arange(8, dtype=np.float32).reshape(2, 4) / 2
    counts = np.arange(8, dtype=np.int64).reshape(2, 4)
    mask = np.array([[True, False, True, False], [False] * 4])
    weighted, masked, anym = _smoke(model, {"FEATURES": feats, "COUNTS": counts, "MASK": mask})
    np.testing.assert_array_equal(weighted, feats.astype(np.float64) * counts)
    np.testing.assert_array_equal(masked, np.where(mask, counts, 0).astype(np.int32))
    np.testing.assert_array_equal(anym, [[True], [False]])
    assert weighted.dtype == np.float64 and masked.dtype == np.int32 and anym.dtype == np.bool_
    return model


MULTI_IO_CONFIG = (
    'name: "multi_io"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 8\n"
    + _tensor_cfg("input", "FEATURES", "TYPE_FP32", [4])
    + _tensor_cfg("input", "COUNTS", "TYPE_INT64", [4])
    + _tensor_cfg("input", "MASK", "TYPE_BOOL", [4])
    + _tensor_cfg("output", "WEIGHTED", "TYPE_FP64", [4])
    + _tensor_cfg("output", "MASKED_COUNTS", "TYPE_INT32", [4])
    + _tensor_cfg("output", "ANY_MASKED", "TYPE_BOOL", [1])
    + "dynamic_batching {\n  max_queue_delay_microseconds: 500\n}\n"
    "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
)


def _text_lower() -> onnx.ModelProto:
    nodes = [
        # StringNormalizer's default locale (en_US.UTF-8) is missing on many machines
        # and makes the session fail to load; "C" exists everywhere (ASCII-only case).
        helper.make_node(
            "StringNormalizer", ["TEXT"], ["TEXT_LOWER"], case_change_action="LOWER", locale="C"
        ),
        helper.make_node("Shape", ["TEXT"], ["LENGTH"]),
    ]
    model = _model(
        "text_lower",
        nodes,
        [_vi("TEXT", TensorProto.STRING, ["n"])],
        [_vi("TEXT_LOWER", TensorProto.STRING, ["n"]), _vi("LENGTH", INT64, [1])],
    )
    lower, length = _smoke(model, {"TEXT": np.array(["Hello", "WORLD", "MiXeD"], dtype=np.object_)})
    assert list(lower) == ["hello", "world", "mixed"], lower
    assert list(length) == [3]
    return model


TEXT_LOWER_CONFIG = (
    'name: "text_lower"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 0\n"
    + _tensor_cfg("input", "TEXT", "TYPE_STRING", [-1])
    + _tensor_cfg("output", "TEXT_LOWER", "TYPE_STRING", [-1])
    + _tensor_cfg("output", "LENGTH", "TYPE_INT64", [1])
)

DEMO_README = """\
# TensorGate demo repository

Served by `tensorgate serve` when no `--model-repository` is given. Triton layout:
`<model>/config.pbtxt` and `<model>/<version>/model.onnx`.

- `simple_mlp`: `INPUT0` FP32 [-1, 16] -> `OUTPUT0` FP32 [-1, 8]. A float32 MLP
  (16 -> 64 -> 8: Gemm, Relu, Gemm) with a dynamic batch dimension; dynamic batching
  (200 us window), max batch 64, one CPU instance.
- `multi_io`: several inputs and outputs of different datatypes, max batch 8.
  Inputs `FEATURES` FP32 [-1, 4], `COUNTS` INT64 [-1, 4], `MASK` BOOL [-1, 4];
  outputs `WEIGHTED` FP64 = FEATURES * COUNTS, `MASKED_COUNTS` INT32 = COUNTS where
  MASK else 0, `ANY_MASKED` BOOL [-1, 1] = any MASK in the row.
- `text_lower`: a string (BYTES) tensor. `TEXT` BYTES [-1] -> `TEXT_LOWER` BYTES [-1]
  (ASCII letters lower-cased by StringNormalizer with locale "C", which every machine
  has) and `LENGTH` INT64 [1] (the number of strings). No batching (max_batch_size 0).

The files are generated, not hand-edited: weights come from a fixed-seed generator, so
`python tests/models/build_models.py demo server/tensorgate/demo_repository` rewrites them
identically (tests/e2e/test_model_builders.py checks that they match).
"""


def build_demo_repository(root: Path) -> Path:
    """Write the demo repository (simple_mlp, multi_io, text_lower) under ``root``."""
    root = Path(root)
    rng = np.random.default_rng(SEED)
    _write_model(root, "simple_mlp", _simple_mlp(rng))
    _write_config(root, "simple_mlp", SIMPLE_MLP_CONFIG)
    _write_model(root, "multi_io", _multi_io())
    _write_config(root, "multi_io", MULTI_IO_CONFIG)
    _write_model(root, "text_lower", _text_lower())
    _write_config(root, "text_lower", TEXT_LOWER_CONFIG)
    (root / "README.md").write_text(DEMO_README)
    return root


# --------------------------------------------------------------------------- test


def _identity(dtype: DType) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"]),
        helper.make_node("Identity", ["INPUT0"], ["OUTPUT1"]),
    ]
    model = _model(
        f"identity_{dtype.suffix}",
        nodes,
        [_vi("INPUT0", dtype.onnx, ["batch", "n"])],
        [_vi("OUTPUT0", dtype.onnx, ["batch", "n"]), _vi("OUTPUT1", dtype.onnx, ["batch", "n"])],
    )
    x = ort_feed(sample(dtype, (2, 3), np.random.default_rng(0)))
    out0, out1 = _smoke(model, {"INPUT0": x})
    np.testing.assert_array_equal(out0, x)
    np.testing.assert_array_equal(out1, x)
    return model


def _identity_config(dtype: DType) -> str:
    return (
        f'name: "identity_{dtype.suffix}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\n"
        + _tensor_cfg("input", "INPUT0", dtype.config, [-1])
        + _tensor_cfg("output", "OUTPUT0", dtype.config, [-1])
        + _tensor_cfg("output", "OUTPUT1", dtype.config, [-1])
        + "dynamic_batching {\n  max_queue_delay_microseconds: 20000\n}\n"
        # Hold every request for the window (no idle flush), so that simultaneous
        # requests batch even on a slow, loaded CI machine: the cross-talk tests rely
        # on really merged executions.
        + 'parameters {\n  key: "batching_idle_flush"\n  value: { string_value: "false" }\n}\n'
    )


def _add_sub() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    model = _model(
        "add_sub",
        nodes,
        [_vi("INPUT0", FP32, ["batch", 16]), _vi("INPUT1", FP32, ["batch", 16])],
        [_vi("OUTPUT0", FP32, ["batch", 16]), _vi("OUTPUT1", FP32, ["batch", 16])],
    )
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    s, d = _smoke(model, {"INPUT0": a, "INPUT1": a * 3})
    np.testing.assert_array_equal(s, a * 4)
    np.testing.assert_array_equal(d, -a * 2)
    return model


def _fixed_shape() -> onnx.ModelProto:
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "TWO")
    model = _model(
        "fixed_shape",
        [helper.make_node("Mul", ["INPUT0", "TWO"], ["OUTPUT0"])],
        [_vi("INPUT0", FP32, [2, 3])],
        [_vi("OUTPUT0", FP32, [2, 3])],
        [two],
    )
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(_smoke(model, {"INPUT0": x})[0], x * 2)
    return model


FIXED_SHAPE_CONFIG = (
    'name: "fixed_shape"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 0\n"
    + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [2, 3])
    + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [2, 3])
)


def _add_constant(name: str, value: float, width: int = 1) -> onnx.ModelProto:
    const = numpy_helper.from_array(np.array(value, dtype=np.float32), "C")
    model = _model(
        name,
        [helper.make_node("Add", ["INPUT0", "C"], ["OUTPUT0"])],
        [_vi("INPUT0", FP32, ["batch", width])],
        [_vi("OUTPUT0", FP32, ["batch", width])],
        [const],
    )
    x = np.ones((2, width), dtype=np.float32)
    np.testing.assert_array_equal(_smoke(model, {"INPUT0": x})[0], x + np.float32(value))
    return model


def versioned_model(name: str, version: int) -> onnx.ModelProto:
    """One version of a versioned_* model: OUTPUT0 = INPUT0 + version."""
    return _add_constant(name, float(version))


def broken_model(name: str) -> onnx.ModelProto:
    """Same interface as versioned_model (INPUT0 [batch, 1] -> OUTPUT0 [batch, 1]) but
    fails in onnxruntime on every input: it reshapes a [b, 1] input to [77 b, 1], which
    no b > 0 fits, while the graph's shapes stay dynamic. Loads fine (the generated
    warm-up inputs just fail), so a canary toward it is a deliberately broken version."""
    factor = numpy_helper.from_array(np.array([77, 1], dtype=np.int64), "FACTOR")
    model = _model(
        name,
        [
            helper.make_node("Shape", ["INPUT0"], ["S"]),
            helper.make_node("Mul", ["S", "FACTOR"], ["S77"]),
            helper.make_node("Reshape", ["INPUT0", "S77"], ["OUTPUT0"]),
        ],
        [_vi("INPUT0", FP32, ["batch", 1])],
        [_vi("OUTPUT0", FP32, ["batch", 1])],
        [factor],
    )
    try:
        _session(model, quiet=True).run(None, {"INPUT0": np.ones((1, 1), np.float32)})
    except Exception:  # onnxruntime's own failure class varies between releases
        pass
    else:
        raise AssertionError("broken_model must fail in onnxruntime")
    return model


def build_routes_repository(root: Path) -> Path:
    """A small repository for the routing tests: ``canary`` (all versions served:
    1 and 2 add their version to INPUT0, 3 fails on every input), ``swap`` (latest
    version only, version 1), ``other`` (one version, INT32 inputs: incompatible)."""
    root = Path(root)
    for version in (1, 2):
        _write_model(root, "canary", versioned_model("canary", version), version)
    _write_model(root, "canary", broken_model("canary"), 3)
    _write_config(root, "canary", _versioned_config("canary", "version_policy: { all { } }\n"))
    _write_model(root, "swap", versioned_model("swap", 1), 1)
    _write_config(root, "swap", _versioned_config("swap", ""))
    int32 = next(d for d in DTYPES if d.v2 == "INT32")
    _write_model(root, "other", _identity(int32), 1)
    _write_config(root, "other", _identity_config(int32).replace(
        'name: "identity_int32"', 'name: "other"'))
    return root


def _versioned_config(name: str, policy: str) -> str:
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 8\n"
        + policy
        + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [1])
        + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [1])
    )


def _identity_fp32(name: str, width: int) -> onnx.ModelProto:
    model = _model(
        name,
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [_vi("INPUT0", FP32, ["batch", width])],
        [_vi("OUTPUT0", FP32, ["batch", width])],
    )
    _smoke(model, {"INPUT0": np.zeros((1, width), dtype=np.float32)})
    return model


def _runtime_error() -> onnx.ModelProto:
    model = _model(
        "runtime_error",
        [helper.make_node("GatherElements", ["INPUT0", "INDICES"], ["OUTPUT0"], axis=1)],
        [_vi("INPUT0", FP32, ["batch", 4]), _vi("INDICES", INT64, ["batch", 1])],
        [_vi("OUTPUT0", FP32, ["batch", 1])],
    )
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    good = _smoke(model, {"INPUT0": x, "INDICES": np.array([[1], [3]], dtype=np.int64)})[0]
    np.testing.assert_array_equal(good, [[1.0], [7.0]])
    try:
        _session(model, quiet=True).run(
            None, {"INPUT0": x, "INDICES": np.array([[0], [99]], dtype=np.int64)}
        )
    except Exception:  # onnxruntime's own failure class varies between releases
        pass
    else:
        raise AssertionError("runtime_error must fail in onnxruntime on an out-of-range index")
    return model


RUNTIME_ERROR_CONFIG = (
    'name: "runtime_error"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 0\n"
    + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [-1, 4])
    + _tensor_cfg("input", "INDICES", "TYPE_INT64", [-1, 1])
    + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [-1, 1])
)

SLOW_QUEUE_CONFIG = (
    'name: "slow_queue"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 8\n"
    + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [1])
    + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [1])
    + "dynamic_batching {\n"
    "  preferred_batch_size: [ 8 ]\n"
    "  max_queue_delay_microseconds: 3000000\n"
    "  default_queue_policy {\n    max_queue_size: 2\n  }\n"
    "}\n"
    # Triton's strict delay: hold even a lone request for the full window (TensorGate
    # otherwise dispatches at once on an idle model), so requests really sit queued.
    'parameters {\n  key: "batching_idle_flush"\n  value: { string_value: "false" }\n}\n'
)

CONTRADICTING_CONFIG = (
    'name: "contradicting_config"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 8\n"
    + _tensor_cfg("input", "INPUT0", "TYPE_INT32", [4])
    + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [4])
)

def _classifier() -> onnx.ModelProto:
    """SCORES [batch, 5] FP32 passed through (OUTPUT0) and cast to INT32 (OUTPUT1): the
    classification extension's test model."""
    model = _model(
        "classifier",
        [
            helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"]),
            helper.make_node("Cast", ["INPUT0"], ["OUTPUT1"], to=TensorProto.INT32),
        ],
        [_vi("INPUT0", FP32, ["batch", 5])],
        [_vi("OUTPUT0", FP32, ["batch", 5]), _vi("OUTPUT1", TensorProto.INT32, ["batch", 5])],
    )
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    out0, out1 = _smoke(model, {"INPUT0": x})
    np.testing.assert_array_equal(out1, x.astype(np.int32))
    return model


CLASSIFIER_LABELS = ("dog", "cat", "bird")  # fewer labels than classes on purpose
CLASSIFIER_CONFIG = (
    'name: "classifier"\n'
    'platform: "onnxruntime_onnx"\n'
    "max_batch_size: 8\n"
    + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [5])
    + 'output {\n  name: "OUTPUT0"\n  data_type: TYPE_FP32\n  dims: [ 5 ]\n'
    '  label_filename: "labels.txt"\n}\n'
    + _tensor_cfg("output", "OUTPUT1", "TYPE_INT32", [5])
)


BAD_CONFIG = (
    'name: "bad_config"\nmax_batch_size: 8\n'
    'input [ { name: "INPUT0" data_type: \n}}} this is {not text format\n'
)


def build_test_repository(root: Path) -> Path:
    """Write the e2e test repository under ``root`` (see tests/e2e/conftest.py)."""
    root = Path(root)
    for dtype in DTYPES:
        name = f"identity_{dtype.suffix}"
        _write_model(root, name, _identity(dtype))
        _write_config(root, name, _identity_config(dtype))

    _write_model(root, "add_sub", _add_sub())  # deliberately no config.pbtxt

    _write_model(root, "fixed_shape", _fixed_shape())
    _write_config(root, "fixed_shape", FIXED_SHAPE_CONFIG)

    policies = {
        "versioned": "",  # default: latest 1
        "versioned_all": "version_policy: { all { } }\n",
        "versioned_specific": "version_policy: { specific { versions: [ 1, 3 ] } }\n",
    }
    for name, policy in policies.items():
        for version in VERSIONS:
            _write_model(root, name, versioned_model(name, version), version)
        _write_config(root, name, _versioned_config(name, policy))

    _write_model(root, "partial_config", _add_constant("partial_config", 1.0, width=4))
    _write_config(root, "partial_config", "max_batch_size: 4\n")

    rng = np.random.default_rng(SEED + 1)
    corrupt = root / "corrupt_model" / "1" / "model.onnx"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())

    _write_model(root, "bad_config", _identity_fp32("bad_config", 4))
    _write_config(root, "bad_config", BAD_CONFIG)

    _write_model(root, "contradicting_config", _identity_fp32("contradicting_config", 4))
    _write_config(root, "contradicting_config", CONTRADICTING_CONFIG)

    _write_model(root, "runtime_error", _runtime_error())
    _write_config(root, "runtime_error", RUNTIME_ERROR_CONFIG)

    _write_model(root, "slow_queue", _identity_fp32("slow_queue", 1))
    _write_config(root, "slow_queue", SLOW_QUEUE_CONFIG)

    _write_model(root, "classifier", _classifier())
    _write_config(root, "classifier", CLASSIFIER_CONFIG)
    (root / "classifier" / "labels.txt").write_text("\n".join(CLASSIFIER_LABELS) + "\n")
    return root


# Models in the test repository that must load, and those that must not.
GOOD_TEST_MODELS = (
    *(f"identity_{d.suffix}" for d in DTYPES),
    "add_sub",
    "fixed_shape",
    "versioned",
    "versioned_all",
    "versioned_specific",
    "partial_config",
    "runtime_error",
    "slow_queue",
    "classifier",
)
BAD_TEST_MODELS = ("corrupt_model", "bad_config", "contradicting_config")


# --------------------------------------------------------------------------- variable length


def text_encoder(name: str, masked: bool = True, vocab: int = 50, hidden: int = 8,
                 layers: int = 1, seed: int = SEED) -> onnx.ModelProto:
    """A BERT-like sentence encoder, small: token embedding, ``layers`` per-token
    tanh(x W + b) layers, then mean pooling over the sequence, masked by attention_mask
    (``masked=False``: over every position, padding included, so padding changes the
    answer). Inputs input_ids, attention_mask INT64 [batch, sequence]; outputs
    token_embeddings FP32 [batch, sequence, hidden] and sentence_embedding FP32
    [batch, hidden]."""
    rng = np.random.default_rng(seed)
    inits = [helper.make_tensor("E", FP32, [vocab, hidden],
                                rng.standard_normal((vocab, hidden)).astype(np.float32).ravel())]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["h0"])]
    for i in range(layers):
        w = rng.standard_normal((hidden, hidden)).astype(np.float32) / np.sqrt(hidden)
        b = rng.standard_normal(hidden).astype(np.float32) * 0.1
        inits += [helper.make_tensor(f"W{i}", FP32, [hidden, hidden], w.ravel()),
                  helper.make_tensor(f"B{i}", FP32, [hidden], b)]
        nodes += [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"]),
                  helper.make_node("Tanh", [f"a{i}"],
                                   ["token_embeddings" if i == layers - 1 else f"h{i + 1}"])]
    if masked:
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=FP32),
            helper.make_node("Unsqueeze", ["maskf", "axes2"], ["mask3"]),
            helper.make_node("Mul", ["token_embeddings", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axes1"], ["total"], keepdims=0),
            helper.make_node("ReduceSum", ["maskf", "axes1"], ["count"], keepdims=1),
            helper.make_node("Max", ["count", "one"], ["count1"]),
            helper.make_node("Div", ["total", "count1"], ["sentence_embedding"]),
        ]
        inits += [helper.make_tensor("axes1", INT64, [1], [1]),
                  helper.make_tensor("axes2", INT64, [1], [2]),
                  helper.make_tensor("one", FP32, [1], [1.0])]
    else:
        nodes += [
            helper.make_node("ReduceMean", ["token_embeddings"], ["mean"], axes=[1],
                             keepdims=0),  # opset 17: axes is an attribute here
            # attention_mask must stay an input: multiply it in without using it.
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=FP32),
            helper.make_node("ReduceSum", ["maskf"], ["masksum"], keepdims=0),
            helper.make_node("Mul", ["masksum", "zero"], ["nothing"]),
            helper.make_node("Add", ["mean", "nothing"], ["sentence_embedding"]),
        ]
        inits.append(helper.make_tensor("zero", FP32, [], [0.0]))
    model = _model(
        name, nodes,
        [_vi("input_ids", INT64, ["batch", "sequence"]),
         _vi("attention_mask", INT64, ["batch", "sequence"])],
        [_vi("token_embeddings", FP32, ["batch", "sequence", hidden]),
         _vi("sentence_embedding", FP32, ["batch", hidden])],
        inits,
    )
    ids = np.array([[1, 2, 3, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0]], dtype=np.int64)
    tokens, pooled = _smoke(model, {"input_ids": ids, "attention_mask": mask})
    assert tokens.shape == (1, 4, hidden) and pooled.shape == (1, hidden)
    return model


def text_encoder_config(name: str, max_batch_size: int = 16, delay_us: int = 20000,
                        varlen: str | None = "input_ids:0,attention_mask:0",
                        extra: str = "") -> str:
    """config.pbtxt for ``text_encoder`` (``varlen``: the variable_length_batching value,
    None: off)."""
    text = (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        + _tensor_cfg("input", "input_ids", "TYPE_INT64", [-1])
        + _tensor_cfg("input", "attention_mask", "TYPE_INT64", [-1])
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}\n"
        + 'parameters {\n  key: "intra_op_thread_count"\n  value: { string_value: "1" }\n}\n'
    )
    if varlen is not None:
        text += ('parameters {\n  key: "variable_length_batching"\n'
                 f'  value: {{ string_value: "{varlen}" }}\n}}\n')
    return text + extra


def build_varlen_repository(root: Path) -> Path:
    """Models for variable-length batching: ``encoder`` (masked pooling, batching on),
    ``encoder_plain`` (the same graph without variable-length batching), and
    ``encoder_unmasked`` (pooling over padding too: must be refused)."""
    root = Path(root)
    hold = 'parameters {\n  key: "batching_idle_flush"\n  value: { string_value: "false" }\n}\n'
    _write_model(root, "encoder", text_encoder("encoder"))
    _write_config(root, "encoder", text_encoder_config("encoder", extra=hold))
    _write_model(root, "encoder_plain", text_encoder("encoder_plain"))
    _write_config(root, "encoder_plain", text_encoder_config("encoder_plain", varlen=None,
                                                             extra=hold))
    _write_model(root, "encoder_unmasked", text_encoder("encoder_unmasked", masked=False))
    _write_config(root, "encoder_unmasked", text_encoder_config("encoder_unmasked"))
    return root


# --------------------------------------------------------------------------- pipelines


def _scale_add(name: str, scale: float, offset: float, dims=("batch", 4)) -> onnx.ModelProto:
    """OUTPUT0 = INPUT0 * scale + offset, FP32."""
    model = _model(
        name,
        [helper.make_node("Mul", ["INPUT0", "s"], ["m"]),
         helper.make_node("Add", ["m", "o"], ["OUTPUT0"])],
        [_vi("INPUT0", FP32, list(dims))], [_vi("OUTPUT0", FP32, list(dims))],
        [helper.make_tensor("s", FP32, [], [scale]), helper.make_tensor("o", FP32, [], [offset])],
    )
    return model


def _ensemble(name: str, steps: list[tuple[str, dict, dict]], inputs, outputs,
              max_batch_size: int = 8) -> str:
    """An ensemble's config.pbtxt: steps as (model, input_map, output_map)."""
    text = f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {max_batch_size}\n'
    for tensor, dtype, dims in inputs:
        text += _tensor_cfg("input", tensor, dtype, dims)
    for tensor, dtype, dims in outputs:
        text += _tensor_cfg("output", tensor, dtype, dims)
    text += "ensemble_scheduling {\n"
    for model, imap, omap in steps:
        text += f'  step {{\n    model_name: "{model}"\n    model_version: -1\n'
        for k, v in imap.items():
            text += f'    input_map {{ key: "{k}" value: "{v}" }}\n'
        for k, v in omap.items():
            text += f'    output_map {{ key: "{k}" value: "{v}" }}\n'
        text += "  }\n"
    return text + "}\n"


def build_pipeline_repository(root: Path) -> Path:
    """Models ``double`` (x2) and ``add_one`` (+1), FP32 [-1, 4], batching; pipelines:
    ``double_then_add`` (X -> double -> add_one -> Y), ``fan_out`` (X to both at once ->
    A, B), and broken ones, each refused for one reason (``bad_*``)."""
    root = Path(root)
    batching = "max_batch_size: 8\ndynamic_batching { }\n"
    for name, scale, offset in (("double", 2.0, 0.0), ("add_one", 1.0, 1.0)):
        _write_model(root, name, _scale_add(name, scale, offset))
        _write_config(root, name, f'name: "{name}"\n' + batching
                      + _tensor_cfg("input", "INPUT0", "TYPE_FP32", [4])
                      + _tensor_cfg("output", "OUTPUT0", "TYPE_FP32", [4]))
    x = [("X", "TYPE_FP32", [4])]
    pipelines = {
        "double_then_add": _ensemble(
            "double_then_add",
            [("double", {"INPUT0": "X"}, {"OUTPUT0": "doubled"}),
             ("add_one", {"INPUT0": "doubled"}, {"OUTPUT0": "Y"})],
            x, [("Y", "TYPE_FP32", [4])]),
        "fan_out": _ensemble(
            "fan_out",
            [("double", {"INPUT0": "X"}, {"OUTPUT0": "A"}),
             ("add_one", {"INPUT0": "X"}, {"OUTPUT0": "B"})],
            x, [("A", "TYPE_FP32", [4]), ("B", "TYPE_FP32", [4])]),
        "bad_missing_model": _ensemble(
            "bad_missing_model", [("nope", {"INPUT0": "X"}, {"OUTPUT0": "Y"})],
            x, [("Y", "TYPE_FP32", [4])]),
        "bad_dtype": _ensemble(
            "bad_dtype", [("double", {"INPUT0": "X"}, {"OUTPUT0": "Y"})],
            [("X", "TYPE_INT32", [4])], [("Y", "TYPE_FP32", [4])]),
        "bad_unmapped": _ensemble(
            "bad_unmapped", [("double", {}, {"OUTPUT0": "Y"})],
            x, [("Y", "TYPE_FP32", [4])]),
        "bad_cycle": _ensemble(
            "bad_cycle",
            [("double", {"INPUT0": "Z"}, {"OUTPUT0": "W"}),
             ("add_one", {"INPUT0": "W"}, {"OUTPUT0": "Z"}),
             ("add_one", {"INPUT0": "X"}, {"OUTPUT0": "Y"})],
            x, [("Y", "TYPE_FP32", [4])]),
        "bad_no_output": _ensemble(
            "bad_no_output", [("double", {"INPUT0": "X"}, {"OUTPUT0": "Q"})],
            x, [("Y", "TYPE_FP32", [4])]),
        "bad_shape": _ensemble(
            "bad_shape", [("double", {"INPUT0": "X"}, {"OUTPUT0": "Y"})],
            [("X", "TYPE_FP32", [3])], [("Y", "TYPE_FP32", [4])]),
    }
    for name, text in pipelines.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        _write_config(root, name, text)
    return root


def main(argv: list[str]) -> int:
    builders = {"demo": build_demo_repository, "test": build_test_repository}
    if len(argv) != 2 or argv[0] not in builders:
        print(f"usage: {Path(__file__).name} demo|test DIR", file=sys.stderr)
        return 2
    root = builders[argv[0]](Path(argv[1]))
    print(f"wrote {argv[0]} repository to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
