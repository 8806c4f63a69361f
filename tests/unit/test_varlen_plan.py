"""The variable-length batching plan: what its config parameters accept and refuse,
buckets, and the pad / slice round trip."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.batching.varlen import plan_from_config
from tensorgate.dtypes import BY_WIRE
from tensorgate.errors import InvalidArgument, ModelLoadError
from tensorgate.tensors import TensorSpec

INPUTS = {
    "ids": TensorSpec("ids", BY_WIRE["INT64"], (-1,), None),
    "mask": TensorSpec("mask", BY_WIRE["INT64"], (-1,), None),
}
OUTPUTS = {
    "tokens": TensorSpec("tokens", BY_WIRE["FP32"], (-1, 4), None),
    "pooled": TensorSpec("pooled", BY_WIRE["FP32"], (4,), None),
}
GRAPH_IN = [SimpleNamespace(name="ids", shape=["batch", "seq"]),
            SimpleNamespace(name="mask", shape=["batch", "seq"])]
GRAPH_OUT = [SimpleNamespace(name="tokens", shape=["batch", "seq", 4]),
             SimpleNamespace(name="pooled", shape=["batch", 4])]


def _config(params: dict, batching: str = "max_batch_size: 8 dynamic_batching { }"):
    text = batching + "".join(
        f' parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items()
    )
    return text_format.Parse(text, mc.ModelConfig())


def _plan(params, batching="max_batch_size: 8 dynamic_batching { }", graph_in=GRAPH_IN):
    return plan_from_config(_config(params, batching), INPUTS, OUTPUTS, graph_in, GRAPH_OUT)


def test_outputs_follow_the_graphs_dimension_names_and_buckets_grow_with_length():
    plan = _plan({"variable_length_batching": "ids:0,mask:0"})
    assert plan.outputs == {"tokens": 1}
    # Default: two bounds per doubling, so padding stays a bounded fraction of length.
    assert [plan.bucket(n) for n in (1, 8, 9, 33, 64, 65)] == [8, 8, 11, 45, 64, 91]
    pow2 = _plan({"variable_length_batching": "ids:0,mask:0",
                  "variable_length_buckets": "pow2"})
    assert [pow2.bucket(n) for n in (1, 8, 9, 33, 64, 65)] == [8, 8, 16, 64, 64, 128]
    step = _plan({"variable_length_batching": "ids:0,mask:0",
                  "variable_length_buckets": "step:10"})
    assert [step.bucket(n) for n in (1, 10, 11)] == [10, 10, 20]
    listed = _plan({"variable_length_batching": "ids:0,mask:0",
                    "variable_length_buckets": "16,48"})
    assert [listed.bucket(n) for n in (3, 17, 48, 50)] == [16, 48, 48, 50]


@pytest.mark.parametrize("params, batching, words", [
    ({"variable_length_batching": "ids:0"}, "max_batch_size: 0",
     "needs max_batch_size > 0 and dynamic_batching"),
    ({"variable_length_batching": "nope:0"}, None, "no input 'nope'"),
    ({"variable_length_batching": "ids"}, None, "'ids' is not NAME:VALUE"),
    ({"variable_length_batching": "ids:x"}, None, "pad value 'x' of input 'ids'"),
    ({"variable_length_batching": "ids:0", "variable_length_buckets": "step:0"}, None,
     "step:N"),
    ({"variable_length_batching": "ids:0", "variable_length_buckets": "pow2:9"}, None,
     "pow2:N, N in 1..8"),
    ({"variable_length_batching": "ids:0", "variable_length_outputs": "pooled:3"}, None,
     "'pooled:3' is not an axis"),
    ({"variable_length_batching": "ids:0", "variable_length_outputs": "other:0"}, None,
     "no output other"),
    ({"variable_length_buckets": "pow2"}, None, "needs variable_length_batching"),
])
def test_bad_parameters_refuse_the_model_naming_them(params, batching, words):
    with pytest.raises(ModelLoadError, match=words):
        _plan(params, **({"batching": batching} if batching else {}))


def test_unnamed_graph_dimensions_need_the_outputs_said():
    unnamed = [SimpleNamespace(name="ids", shape=[None, None]),
               SimpleNamespace(name="mask", shape=[None, None])]
    with pytest.raises(ModelLoadError, match="variable_length_outputs"):
        _plan({"variable_length_batching": "ids:0,mask:0"}, graph_in=unnamed)
    plan = _plan({"variable_length_batching": "ids:0,mask:0",
                  "variable_length_outputs": "tokens:0,pooled:none"}, graph_in=unnamed)
    assert plan.outputs == {"tokens": 1}


def test_pad_and_slice_round_trip():
    plan = _plan({"variable_length_batching": "ids:0,mask:0"})
    a = {"ids": np.array([[1, 2, 3]]), "mask": np.array([[1, 1, 1]])}
    b = {"ids": np.array([[4, 5, 6, 7, 8], [9, 9, 9, 9, 9]]), "mask": np.ones((2, 5), int)}
    assert plan.shape_key(a) == plan.shape_key(b) == (8, (-1,), (-1,))
    batch = [SimpleNamespace(inputs=a, rows=1, outputs=None),
             SimpleNamespace(inputs=b, rows=2, outputs=None)]
    feed, real, padded = plan.gather(batch, None)
    assert feed["ids"].tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8], [9, 9, 9, 9, 9]]
    assert (real, padded) == (2 * 13, 2 * 15)
    tokens = np.arange(3 * 5 * 4, dtype=np.float32).reshape(3, 5, 4)
    pooled = np.arange(12, dtype=np.float32).reshape(3, 4)
    plan.scatter(batch, ["tokens", "pooled"], [tokens, pooled])
    assert batch[0].outputs["tokens"].shape == (1, 3, 4)
    assert batch[1].outputs["tokens"].shape == (2, 5, 4)
    np.testing.assert_array_equal(batch[1].outputs["pooled"], pooled[1:])
    with pytest.raises(InvalidArgument, match="'ids' has 3, 'mask' has 2"):
        plan.shape_key({"ids": np.ones((1, 3)), "mask": np.ones((1, 2))})
