"""Request bytes: inputs resolved from scenario + metadata, data sources, wire form
(checked by parsing with the protobuf library)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from bench.harness.payload import InputSpec, build_payloads, resolve_inputs
from bench.harness.scenario import InputOverride, Scenario, ScenarioError
from tensorgate._proto.inference import grpc_service_pb2 as pb

META = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}], "outputs": []}


def _scenario(**kw) -> Scenario:
    return Scenario(model="m", concurrency=(1,), **kw).validate()


def test_shapes_from_metadata_and_config():
    batched = resolve_inputs(_scenario(batch_size=4), META, max_batch_size=64)
    assert batched == [InputSpec("INPUT0", "FP32", (4, 16), True)]
    # No ModelConfig: a leading -1 in the metadata means a batch dimension.
    assert resolve_inputs(_scenario(), META, None)[0].shape == (1, 16)
    # max_batch_size 0: the metadata shape is the whole request's; -1 needs the scenario.
    with pytest.raises(ScenarioError, match="variable dimension"):
        resolve_inputs(_scenario(), META, 0)
    fixed = resolve_inputs(_scenario(inputs={"INPUT0": InputOverride(shape=(2, 16))}), META, 0)
    assert fixed == [InputSpec("INPUT0", "FP32", (2, 16), False)]
    # No metadata at all (an echo server): the scenario's inputs, batched.
    bare = resolve_inputs(_scenario(inputs={"X": InputOverride("INT64", (3,))}), None, None)
    assert bare == [InputSpec("X", "INT64", (1, 3), True)]
    with pytest.raises(ScenarioError, match="not inputs of"):
        resolve_inputs(_scenario(inputs={"NOPE": InputOverride("FP32", (1,))}), META, 64)


def _decoded(payload: bytes):
    request = pb.ModelInferRequest.FromString(payload)
    return request, request.inputs[0], request.raw_input_contents[0]


def test_random_payloads_are_distinct_and_well_formed():
    scenario = _scenario(batch_size=2, distinct_requests=3, version="1", outputs=("OUTPUT0",))
    specs = resolve_inputs(scenario, META, 64)
    payloads = build_payloads(scenario, specs)
    assert len(set(payloads)) == 3
    request, tensor, raw = _decoded(payloads[0])
    assert (request.model_name, request.model_version) == ("m", "1")
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("INPUT0", "FP32", [2, 16])
    assert len(raw) == 2 * 16 * 4
    assert [o.name for o in request.outputs] == ["OUTPUT0"]


def test_file_data_npy_and_json(tmp_path):
    specs = [InputSpec("INPUT0", "FP32", (1, 16), True)]
    stack = np.arange(3 * 16, dtype=np.float32).reshape(3, 1, 16)
    np.save(tmp_path / "d.npy", stack)
    payloads = build_payloads(_scenario(data=str(tmp_path / "d.npy")), specs)
    assert len(payloads) == 3
    raw = _decoded(payloads[2])[2]
    assert np.array_equal(np.frombuffer(raw, "<f4"), stack[2].ravel())

    # perf_analyzer's layout, flat contents.
    (tmp_path / "d.json").write_text(json.dumps(
        {"data": [{"INPUT0": {"content": list(range(16)), "shape": [16]}}]}))
    payloads = build_payloads(_scenario(data=str(tmp_path / "d.json")), specs)
    assert np.array_equal(np.frombuffer(_decoded(payloads[0])[2], "<f4"), np.arange(16))
    with pytest.raises(ScenarioError, match="shape"):
        np.save(tmp_path / "bad.npy", np.zeros((5, 7), np.float32))
        build_payloads(_scenario(data=str(tmp_path / "bad.npy")), specs)


def test_bytes_and_zeros():
    specs = [InputSpec("TEXT", "BYTES", (1, 2), True)]
    (payload,) = build_payloads(_scenario(data="zeros"), specs)
    assert _decoded(payload)[2] == struct.pack("<I", 0) * 2
    raw = _decoded(build_payloads(_scenario(distinct_requests=1), specs)[0])[2]
    n = struct.unpack_from("<I", raw)[0]
    assert raw[4:4 + n].startswith(b"bench-")
