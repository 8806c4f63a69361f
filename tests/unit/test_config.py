"""Config completion from the ONNX graph, contradiction errors, and version policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.errors import ModelLoadError
from tensorgate.repository.config import GraphTensor, ParsedConfig, complete_config, parse_config
from tensorgate.repository.layout import select_versions, versions_on_disk

F32 = "tensor(float)"
GRAPH_IN = [GraphTensor("INPUT0", F32, (-1, 16)), GraphTensor("INPUT1", "tensor(int64)", (-1, 4))]
GRAPH_OUT = [GraphTensor("OUTPUT0", F32, (-1, 8))]


def parsed(text: str) -> ParsedConfig:
    config = text_format.Parse(text, mc.ModelConfig())
    return ParsedConfig(config, "max_batch_size" in text)


def complete(text: str, inputs=GRAPH_IN, outputs=GRAPH_OUT, default_mbs: int = 4):
    return complete_config(parsed(text), "m", inputs, outputs, default_mbs)


def test_empty_config_is_completed_from_the_graph_with_batching():
    config = complete("")
    assert config.name == "m"
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size == 4
    assert config.HasField("dynamic_batching")
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_INT64", [4]),
    ]
    assert [(o.name, list(o.dims)) for o in config.output] == [("OUTPUT0", [8])]
    assert config.version_policy.latest.num_versions == 1
    assert len(config.instance_group) == 1 and config.instance_group[0].count == 1


def test_graph_without_batch_dimension_gets_max_batch_size_zero():
    inputs = [GraphTensor("X", F32, (2, 3))]
    outputs = [GraphTensor("Y", F32, (2, 3))]
    config = complete("", inputs, outputs)
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3]


def test_explicit_max_batch_size_zero_is_respected():
    config = complete("max_batch_size: 0")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 16]


def test_partial_config_keeps_given_fields_and_adds_missing_tensors():
    config = complete('max_batch_size: 8 input { name: "INPUT0" data_type: TYPE_FP32 dims: [16] }')
    assert config.max_batch_size == 8
    assert not config.HasField("dynamic_batching")  # only auto-completed sizes turn it on
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert [o.name for o in config.output] == ["OUTPUT0"]


def test_wrong_datatype_is_rejected_naming_the_field():
    with pytest.raises(ModelLoadError) as err:
        complete('max_batch_size: 8 input { name: "INPUT0" data_type: TYPE_INT32 dims: [16] }')
    assert "input 'INPUT0' data_type: TYPE_INT32" in str(err.value)
    assert "TYPE_FP32" in str(err.value)


def test_wrong_dims_are_rejected_naming_the_field():
    with pytest.raises(ModelLoadError, match=r"input 'INPUT0' dims: \[15\]"):
        complete('max_batch_size: 8 input { name: "INPUT0" data_type: TYPE_FP32 dims: [15] }')


def test_unknown_tensor_is_rejected_listing_the_graph_tensors():
    with pytest.raises(ModelLoadError, match=r"output 'NOPE'.*OUTPUT0"):
        complete('max_batch_size: 8 output { name: "NOPE" data_type: TYPE_FP32 dims: [8] }')


def test_batching_needs_a_dynamic_first_dimension():
    inputs = [GraphTensor("X", F32, (1, 3))]
    outputs = [GraphTensor("Y", F32, (1, 3))]
    with pytest.raises(ModelLoadError, match="max_batch_size 4.*'X'.*batch"):
        complete("max_batch_size: 4", inputs, outputs)


def test_reshape_is_checked_against_the_graph():
    config = complete(
        'max_batch_size: 8 input { name: "INPUT0" data_type: TYPE_FP32 dims: [4, 4] '
        "reshape { shape: [16] } }"
    )
    assert list(config.input[0].dims) == [4, 4]


@pytest.mark.parametrize(
    "text, message",
    [
        ('name: "other"', "name 'other' does not match"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan'"),
        ("max_batch_size: 8 dynamic_batching { preferred_batch_size: [16] }",
         "preferred_batch_size 16"),
        ("max_batch_size: 0 dynamic_batching { }", "requires max_batch_size > 0"),
        ("max_batch_size: 8 dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
         "default_priority_level 3"),
        ('backend: "python"', "backend 'python'"),
        ('platform: "ensemble" ensemble_scheduling { }', "platform 'ensemble'"),
        ("max_batch_size: 8 sequence_batching { }", "sequence_batching: not supported"),
        ("response_cache { enable: true }", r"response_cache \{ enable: true \}"),
        ('optimization { execution_accelerators { gpu_execution_accelerator [ '
         '{ name: "cuda_graphs" } ] } }', "gpu_execution_accelerator 'cuda_graphs'"),
        ('optimization { execution_accelerators { gpu_execution_accelerator [ '
         '{ name: "tensorrt" parameters { key: "precision_mode" value: "INT4" } } ] } }',
         "'precision_mode': 'INT4': expected FP32 or FP16"),
        ('optimization { execution_accelerators { gpu_execution_accelerator [ '
         '{ name: "tensorrt" parameters { key: "trt_int8_enable" value: "1" } } ] } }',
         "parameter 'trt_int8_enable': not a TensorRT parameter"),
        ('optimization { execution_accelerators { cpu_execution_accelerator [ '
         '{ name: "openvino" } ] } }', "cpu_execution_accelerator 'openvino'"),
        ("model_transaction_policy { decoupled: true }", "decoupled"),
        ('max_batch_size: 8 batch_input { kind: BATCH_ELEMENT_COUNT target_name: "X" '
         'data_type: TYPE_FP32 source_input: "INPUT0" }', "batch_input"),
        ('model_repository_agents { agents { name: "checksum" } }', "model_repository_agents"),
        ('max_batch_size: 8 input { name: "INPUT0" data_type: TYPE_FP32 dims: [16] '
         'allow_ragged_batch: true }', "allow_ragged_batch: not supported"),
    ],
)
def test_invalid_configs_name_the_field(text, message):
    with pytest.raises(ModelLoadError, match=message):
        complete(text)


def test_unparseable_config_names_the_line(tmp_path: Path):
    (tmp_path / "config.pbtxt").write_text("max_batch_size: 4\ninput { name: }\n")
    with pytest.raises(ModelLoadError, match=r"config.pbtxt: 2:"):
        parse_config(tmp_path / "config.pbtxt")


def test_missing_config_is_empty_and_not_a_given_batch_size(tmp_path: Path):
    result = parse_config(tmp_path / "config.pbtxt")
    assert result.config == mc.ModelConfig() and not result.max_batch_size_given


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("", [3]),
        ("latest { num_versions: 2 }", [2, 3]),
        ("all { }", [1, 2, 3]),
        ("specific { versions: [1, 3, 7] }", [1, 3]),
    ],
)
def test_version_policy(policy, expected, tmp_path: Path):
    for v in ("1", "2", "3", "notaversion", "007"):
        (tmp_path / v).mkdir()
    available = versions_on_disk(tmp_path)
    assert available == [1, 2, 3]
    p = text_format.Parse(policy, mc.ModelVersionPolicy())
    assert select_versions(p, available) == expected
