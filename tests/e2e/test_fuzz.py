"""Hypothesis-driven malformed ModelInferRequests against a live server.

Raw bytes go through a generic grpc channel (no client-side serialization): random
bytes, truncated and bit-flipped valid messages, wrong datatypes / shapes / sizes, huge
and negative declared shapes, BYTES with bad length prefixes, raw and typed contents
mixed. Every answer must be a documented status with a written message (never UNKNOWN,
never the generic "internal error" of an unexpected exception), every call returns
within its timeout, and the server is live at the end. The number of cases tried is
printed (run with -s) and asserted to be non-trivial.
"""

from __future__ import annotations

import collections
import shutil
import struct

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as pb

from e2e_support import start_server
from fuzz_cases import (DATATYPES, HUGE_DIMS, HUGE_SHAPE_DIMS, HUGE_SHAPE_MODELS, WIDTHS,
                        huge_shape_message)
from fuzz_cases import INFER_MODELS as MODELS

CALL_TIMEOUT_S = 5.0
EXAMPLES = 400  # per strategy; 5 strategies: 2,000 cases, about 10 s

ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
TRIED: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def fuzz_server(test_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_repo")
    for name in MODELS:
        shutil.copytree(test_repo / name, root / name)
    with start_server(root, "--max-message-mb", "4") as srv:
        yield srv
    print(f"\nfuzz cases tried: {dict(TRIED)} (total {sum(TRIED.values())})")


@pytest.fixture(scope="module")
def call(fuzz_server):
    channel = grpc.insecure_channel(fuzz_server.grpc_url)
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in/out

    def send(kind: str, data: bytes) -> None:
        TRIED[kind] += 1
        try:
            infer(data, timeout=CALL_TIMEOUT_S)
            return
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"hang on {data[:200]!r}"
        if code == grpc.StatusCode.INTERNAL:
            # Allowed only as the runtime's own failure on a valid request.
            assert details.startswith("onnxruntime failed"), (details, data[:200])
            return
        assert code in ALLOWED, (code, details, data[:200])
        assert details and "internal error" not in details, (code, details)

    yield send
    channel.close()


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)

dims = st.one_of(st.integers(-3, 9), st.sampled_from(HUGE_DIMS))


@st.composite
def requests(draw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=draw(st.sampled_from(MODELS + ("no_such_model", ""))))
    if draw(st.booleans()):
        req.model_version = draw(st.sampled_from(["1", "2", "x", "-1", "99999999999999999999"]))
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["INPUT0", "INPUT1", "INDICES", "nope", ""]))
        dtype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(dims, max_size=4))
        t = req.inputs.add(name=name, datatype=dtype, shape=shape)
        payload = draw(st.sampled_from(["exact", "random", "bad_bytes", "empty"]))
        count = 1
        for d in shape:
            count *= max(d, 0)
        if payload == "exact" and count <= 64:
            width = WIDTHS.get(dtype, 4)
            if dtype == "BYTES":
                items = [draw(st.binary(max_size=6)) for _ in range(count)]
                data = b"".join(struct.pack("<I", len(x)) + x for x in items)
            else:
                data = draw(st.binary(min_size=count * width, max_size=count * width))
        elif payload == "bad_bytes":
            data = struct.pack("<I", draw(st.sampled_from([2**32 - 1, 2**31, 100, 5]))) + b"abc"
        elif payload == "random":
            data = draw(st.binary(max_size=64))
        else:
            data = b""
        if use_raw:
            req.raw_input_contents.append(data)
            if draw(st.integers(0, 9)) == 0:  # mixed raw and typed
                t.contents.fp32_contents.extend([1.0, 2.0])
        else:
            field = draw(st.sampled_from(["fp32_contents", "int64_contents", "bytes_contents",
                                          "int_contents", "bool_contents"]))
            n = draw(st.integers(0, 8))
            values = {
                "fp32_contents": [0.5] * n, "int64_contents": [7] * n,
                "bytes_contents": [b"ab"] * n, "int_contents": [-1] * n,
                "bool_contents": [True] * n,
            }[field]
            getattr(t.contents, field).extend(values)
    if draw(st.integers(0, 4)) == 0:
        req.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "OUTPUT1", "nope"])))
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from(["priority", "timeout", "other"]))
        param = req.parameters[key]
        kind = draw(st.sampled_from(["int64_param", "string_param", "bool_param"]))
        setattr(param, kind, {"int64_param": -5, "string_param": "x", "bool_param": True}[kind])
    if draw(st.integers(0, 9)) == 0:  # an extra raw entry nobody asked for
        req.raw_input_contents.append(b"\0" * 4)
    return req


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes(call, data):
    call("random_bytes", data)


@FUZZ
@given(req=requests())
def test_structured(call, req):
    call("structured", req.SerializeToString())


@FUZZ
@given(req=requests(), cut=st.floats(0, 1, exclude_max=True))
def test_truncated(call, req, cut):
    data = req.SerializeToString()
    call("truncated", data[: int(len(data) * cut)])


@FUZZ
@given(req=requests(), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                 st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated(call, req, flips):
    data = bytearray(req.SerializeToString())
    if data:
        for where, value in flips:
            data[int(len(data) * where)] = value
    call("mutated", bytes(data))


@FUZZ
@given(shape=st.lists(st.sampled_from(HUGE_SHAPE_DIMS), min_size=1, max_size=5),
       model=st.sampled_from(HUGE_SHAPE_MODELS), typed=st.booleans())
def test_huge_declared_shapes(call, shape, model, typed):
    call("huge_shapes", huge_shape_message(model, shape, typed).SerializeToString())


# -- regressions from bench/fuzz_scale.py (bench/results/2026-12-07-fuzz) --------------

CONTROL_RPCS = ("ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics",
                "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
                "SystemSharedMemoryStatus", "SystemSharedMemoryRegister",
                "SystemSharedMemoryUnregister", "LogSettings", "TraceSetting", "ServerMetadata")


@pytest.mark.parametrize("rpc", CONTROL_RPCS)
@pytest.mark.parametrize("data", [b"\n\x05ab", b"\x08", b"\xff\xff\xff"])  # for any message
def test_malformed_control_message_is_invalid_argument(fuzz_server, rpc, data):
    """A control-plane message that does not parse was UNKNOWN ("Unexpected <class
    'DecodeError'>", grpc.aio's answer to a deserializer that raises) with a traceback in
    the log; it is INVALID_ARGUMENT, as a malformed ModelInfer is."""
    with grpc.insecure_channel(fuzz_server.grpc_url) as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(f"/inference.GRPCInferenceService/{rpc}")(data, timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith("malformed "), err.value.details()


def test_malformed_routing_message_is_invalid_argument(fuzz_server):
    with grpc.insecure_channel(fuzz_server.grpc_url) as ch:
        with pytest.raises(grpc.RpcError) as err:
            ch.unary_unary("/tensorgate.v1.RoutingService/GetRoute")(b"\n\x09x",
                                                                     timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()


@pytest.mark.parametrize("name", ["y" * 70_000, "\u00e9" * 30_000, "\U0001f600" * 9_000])
def test_huge_name_gets_its_own_status(fuzz_server, name):
    """A message that quoted a 70,000-character model name did not fit gRPC's 8 KiB
    metadata limit: the caller read RESOURCE_EXHAUSTED "received initial metadata size
    exceeds limit" instead of NOT_FOUND. Messages are cut to 4 KiB percent-encoded."""
    with grpc.insecure_channel(fuzz_server.grpc_url) as ch:
        for rpc, msg in (("ModelMetadata", pb.ModelMetadataRequest(name=name)),
                         ("RepositoryModelUnload",
                          pb.RepositoryModelUnloadRequest(model_name=name))):
            with pytest.raises(grpc.RpcError) as err:
                ch.unary_unary(f"/inference.GRPCInferenceService/{rpc}")(
                    msg.SerializeToString(), timeout=CALL_TIMEOUT_S)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND, (rpc, err.value.details())
            assert "more characters)" in err.value.details()


@pytest.mark.parametrize("name", ["x" * 256, "y" * 70_000])
def test_load_of_a_name_too_long_for_the_file_system_is_not_found(fuzz_server, name):
    """RepositoryModelLoad of a name past NAME_MAX was INTERNAL (ENAMETOOLONG from the
    directory lookup); no directory has that name, so it is NOT_FOUND like any other."""
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(fuzz_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=name),
                                     timeout=CALL_TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()


def test_server_still_live_after_fuzzing(fuzz_server, call):
    from tritonclient.grpc import service_pb2_grpc

    with grpc.insecure_channel(fuzz_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
        req = pb.ModelInferRequest(model_name="identity_fp32")
        req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2])
        req.raw_input_contents.append(np.array([1, 2], np.float32).tobytes())
        out = stub.ModelInfer(req, timeout=5)
        assert np.frombuffer(out.raw_output_contents[0], np.float32).tolist() == [1.0, 2.0]
    assert sum(TRIED.values()) >= 5 * EXAMPLES * 0.5
    assert "Traceback" not in fuzz_server.log, fuzz_server.log[-3000:]
