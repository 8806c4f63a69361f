"""What Triton clients and scripts rely on beyond the wire format: error messages that
begin with Triton's words, duplicate outputs refused, the classification extension.

Requests are built as raw protobuf messages, so that each can be malformed in exactly
one way that tritonclient would not let through; the classification tests use
tritonclient's own ``class_count``.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from e2e_support import infer_input, status_of
from tensorgate._proto.inference import grpc_service_pb2 as ipb

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def call(server):
    channel = grpc.insecure_channel(server.grpc_url)
    stub = channel.unary_unary(
        INFER,
        request_serializer=ipb.ModelInferRequest.SerializeToString,
        response_deserializer=ipb.ModelInferResponse.FromString,
    )
    yield lambda request: stub(request, timeout=10)
    channel.close()


def _request(model: str, version: str = "") -> ipb.ModelInferRequest:
    return ipb.ModelInferRequest(model_name=model, model_version=version)


def _raw(req, name: str, datatype: str, shape, data: bytes):
    req.inputs.add(name=name, datatype=datatype, shape=list(shape))
    req.raw_input_contents.append(data)
    return req


def _f32(*shape) -> bytes:
    return np.zeros(shape, np.float32).tobytes()


def _strings(*items: bytes) -> bytes:
    return b"".join(len(i).to_bytes(4, "little") + i for i in items)


def _unknown_model():
    return _request("nope")


def _unknown_version():
    return _raw(_request("identity_fp32", "9"), "INPUT0", "FP32", [1, 3], _f32(1, 3))


def _version_not_a_number():
    return _raw(_request("identity_fp32", "latest"), "INPUT0", "FP32", [1, 3], _f32(1, 3))


def _one_of_two_inputs():
    return _raw(_request("add_sub"), "INPUT0", "FP32", [1, 16], _f32(1, 16))


def _no_inputs():
    return _request("add_sub")


def _unexpected_input():
    req = _raw(_request("add_sub"), "INPUT0", "FP32", [1, 16], _f32(1, 16))
    return _raw(req, "INPUTX", "FP32", [1, 16], _f32(1, 16))


def _duplicate_input():
    req = _raw(_request("identity_fp32"), "INPUT0", "FP32", [1, 3], _f32(1, 3))
    return _raw(req, "INPUT0", "FP32", [1, 3], _f32(1, 3))


def _wrong_datatype():
    return _raw(_request("identity_fp32"), "INPUT0", "INT32", [1, 3], _f32(1, 3))


def _wrong_shape():
    req = _raw(_request("add_sub"), "INPUT0", "FP32", [1, 15], _f32(1, 15))
    return _raw(req, "INPUT1", "FP32", [1, 16], _f32(1, 16))


def _raw_byte_size():
    return _raw(_request("identity_fp32"), "INPUT0", "FP32", [1, 3], _f32(1, 2))


def _typed_count():
    req = _request("identity_fp32")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3]).contents.fp32_contents[:] = [1, 2]
    return req


def _explicit_type():
    req = _request("identity_fp32")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3]).contents.int_contents[:] = [1, 2, 3]
    return req


def _mixed_contents():
    req = _raw(_request("add_sub"), "INPUT0", "FP32", [1, 16], _f32(1, 16))
    req.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16]).contents.fp32_contents[:] = [0] * 16
    return req


def _batch_too_large():
    return _raw(_request("identity_fp32"), "INPUT0", "FP32", [9, 1], _f32(9, 1))


def _fewer_strings():
    return _raw(_request("identity_bytes"), "INPUT0", "BYTES", [1, 4], _strings(b"a", b"b"))


def _more_strings():
    return _raw(_request("identity_bytes"), "INPUT0", "BYTES", [1, 2], _strings(b"a", b"b", b"c"))


def _unknown_output():
    req = _raw(_request("identity_fp32"), "INPUT0", "FP32", [1, 3], _f32(1, 3))
    req.outputs.add(name="NOPE")
    return req


def _duplicate_output():
    req = _raw(_request("identity_fp32"), "INPUT0", "FP32", [1, 3], _f32(1, 3))
    req.outputs.add(name="OUTPUT0")
    req.outputs.add(name="OUTPUT1")
    req.outputs.add(name="OUTPUT0")
    return req


@pytest.mark.parametrize(
    "make, code, triton_words",
    [
        (_unknown_model, "NOT_FOUND", "Request for unknown model: 'nope' is not found"),
        (_unknown_version, "NOT_FOUND",
         "Request for unknown model: 'identity_fp32' version 9 is not found"),
        (_version_not_a_number, "INVALID_ARGUMENT",
         "failed to get model version from specified version string 'latest'"),
        (_one_of_two_inputs, "INVALID_ARGUMENT",
         "expected 2 inputs but got 1 inputs for model 'add_sub'. Got input(s) ['INPUT0'], "
         "but missing required input(s) ['INPUT1']. Please provide all required input(s)."),
        (_no_inputs, "INVALID_ARGUMENT",
         "expected 2 inputs but got 0 inputs for model 'add_sub'. Got input(s) [], but "
         "missing required input(s) ['INPUT0','INPUT1']. Please provide all required input(s)."),
        (_unexpected_input, "INVALID_ARGUMENT",
         "unexpected inference input 'INPUTX' for model 'add_sub'"),
        (_duplicate_input, "INVALID_ARGUMENT", "input 'INPUT0' already exists in request"),
        (_wrong_datatype, "INVALID_ARGUMENT",
         "inference input 'INPUT0' data-type is 'INT32', but model 'identity_fp32' expects "
         "'FP32'"),
        (_wrong_shape, "INVALID_ARGUMENT",
         "unexpected shape for input 'INPUT0' for model 'add_sub'. Expected [-1,16], got "
         "[1,15]"),
        (_raw_byte_size, "INVALID_ARGUMENT",
         "input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 12, "
         "got 8"),
        (_typed_count, "INVALID_ARGUMENT",
         "input byte size mismatch for input 'INPUT0' for model 'identity_fp32'. Expected 12, "
         "got 8"),
        (_explicit_type, "INVALID_ARGUMENT",
         "unexpected explicit tensor data for input tensor 'INPUT0' for model 'identity_fp32' "
         "of type 'INT32', expected datatype 'FP32'"),
        (_mixed_contents, "INVALID_ARGUMENT",
         "contents field must not be specified when using raw_input_contents for 'INPUT1' for "
         "model 'add_sub'"),
        (_batch_too_large, "INVALID_ARGUMENT",
         "inference request batch-size must be <= 8 for 'identity_fp32'"),
        (_fewer_strings, "INVALID_ARGUMENT",
         "expected 4 string elements for inference input 'INPUT0' for model 'identity_bytes', "
         "got 2"),
        (_more_strings, "INVALID_ARGUMENT",
         "unexpected number of string elements 3 for inference input 'INPUT0' for model "
         "'identity_bytes', expecting 2"),
        (_unknown_output, "INVALID_ARGUMENT",
         "unexpected inference output 'NOPE' for model 'identity_fp32'"),
        (_duplicate_output, "INVALID_ARGUMENT", "output 'OUTPUT0' already exists in request"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_errors_begin_with_tritons_words(call, make, code, triton_words):
    with pytest.raises(grpc.RpcError) as err:
        call(make())
    assert err.value.code().name == code
    assert err.value.details().startswith(triton_words), err.value.details()


def test_a_version_with_leading_zeros_names_that_version(call):
    req = _raw(_request("versioned_all", "01"), "INPUT0", "FP32", [1, 1], _f32(1, 1))
    assert call(req).model_version == "1"


def test_one_output_named_once_is_fine(call):
    req = _raw(_request("identity_fp32"), "INPUT0", "FP32", [1, 3], _f32(1, 3))
    req.outputs.add(name="OUTPUT1")
    reply = call(req)
    assert [o.name for o in reply.outputs] == ["OUTPUT1"]


SCORES = np.array([[0.1, 0.9, 0.3, 0.7, 0.2], [5, 4, 3, 2, 1]], dtype=np.float32)


def _classify(client, *outputs):
    return client.infer("classifier", [infer_input("INPUT0", SCORES)], outputs=list(outputs))


def test_classification_answers_top_k_with_labels(client):
    result = _classify(
        client,
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=2),
        grpcclient.InferRequestedOutput("OUTPUT1", class_count=1),
    )
    out0 = result.get_output("OUTPUT0")
    assert out0.datatype == "BYTES" and list(out0.shape) == [2, 2]
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT0"),
        np.array([[b"0.900000:1:cat", b"0.700000:3"], [b"5.000000:0:dog", b"4.000000:1:cat"]],
                 dtype=object),
    )
    # An integer output: values written as integers; labels belong to OUTPUT0 only.
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT1"), np.array([[b"0:0"], [b"5:0"]], dtype=object)
    )


def test_classification_count_is_clipped_and_other_outputs_stay_raw(client):
    result = _classify(
        client,
        grpcclient.InferRequestedOutput("OUTPUT0", class_count=50),
        grpcclient.InferRequestedOutput("OUTPUT1"),
    )
    assert list(result.get_output("OUTPUT0").shape) == [2, 5]
    assert result.as_numpy("OUTPUT0")[1, 4] == b"1.000000:4"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), SCORES.astype(np.int32))


@pytest.mark.parametrize(
    "model, value, words",
    [
        ("classifier", -1, "invalid value for 'classification' parameter"),
        ("classifier", "two", "invalid value type for 'classification' parameter"),
        ("identity_bytes", 1, "class result not available for output due to unsupported type "
                              "'BYTES'"),
    ],
)
def test_bad_classification_requests(call, model, value, words):
    if model == "classifier":
        req = _raw(_request(model), "INPUT0", "FP32", [1, 5], _f32(1, 5))
    else:
        req = _raw(_request(model), "INPUT0", "BYTES", [1, 1], _strings(b"a"))
    out = req.outputs.add(name="OUTPUT0")
    if isinstance(value, int):
        out.parameters["classification"].int64_param = value
    else:
        out.parameters["classification"].string_param = value
    with pytest.raises(grpc.RpcError) as err:
        call(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in err.value.details()


def test_non_utf8_bytes_are_refused_by_element(client):
    from tritonclient.utils import InferenceServerException

    arr = np.array([[b"ok", b"\xff\xfe"]], dtype=object)
    with pytest.raises(InferenceServerException) as err:
        client.infer("identity_bytes", [infer_input("INPUT0", arr, "BYTES")])
    assert status_of(err.value) == "INVALID_ARGUMENT"
    assert "BYTES element 1 is not valid UTF-8" in str(err.value)
