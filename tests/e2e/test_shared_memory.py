"""System shared memory (the v2 shared-memory extension) with the official clients:
regions created with ``tritonclient.utils.shared_memory``, registered over gRPC and
HTTP, inputs read from them and outputs written into them, and every way to get it
wrong answered with a status and a message naming what was wrong. One server with
``--allow-client-shm``; the default (off) is checked against the module-wide server.
"""

from __future__ import annotations

import base64
import os
import uuid

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from e2e_support import start_server

ROW = 16 * 4  # one add_sub row: 16 FP32


@pytest.fixture(scope="module")
def server(test_repo):
    with start_server(test_repo, "--allow-client-shm") as srv:
        yield srv


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, server):
    if request.param == "grpc":
        c = grpcclient.InferenceServerClient(server.grpc_url)
    else:
        c = httpclient.InferenceServerClient(server.http_url)
    c.protocol = request.param
    c.lib = grpcclient if request.param == "grpc" else httpclient
    yield c
    c.unregister_system_shared_memory()
    c.close()


class Regions:
    """Shared-memory objects made for one test, destroyed (and unregistered) after it."""

    def __init__(self, client) -> None:
        self.client = client
        self.handles = {}

    def make(self, name: str, byte_size: int, register: bool = True, offset: int = 0):
        key = f"/tg_{name}_{uuid.uuid4().hex[:8]}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles[name] = (handle, key)
        if register:
            self.client.register_system_shared_memory(name, key, byte_size - offset, offset)
        return handle, key

    def close(self) -> None:
        self.client.unregister_system_shared_memory()
        for handle, _ in self.handles.values():
            shm.destroy_shared_memory_region(handle)


@pytest.fixture
def regions(client):
    r = Regions(client)
    yield r
    r.close()


def _status_names(client) -> set:
    status = client.get_system_shared_memory_status()
    if client.protocol == "grpc":
        return set(status.regions)
    return {r["name"] for r in status}


def _add_sub_io(client, shm_inputs=(0, 1), shm_outputs=(0, 1), a=None, b=None):
    a = np.arange(16, dtype=np.float32).reshape(1, 16) if a is None else a
    b = np.full((1, 16), 3, dtype=np.float32) if b is None else b
    lib = client.lib
    inputs = [lib.InferInput("INPUT0", [1, 16], "FP32"), lib.InferInput("INPUT1", [1, 16], "FP32")]
    for i, (inp, value) in enumerate(zip(inputs, (a, b))):
        if i in shm_inputs:
            inp.set_shared_memory(f"in{i}", ROW)
        else:
            inp.set_data_from_numpy(value)
    outputs = [lib.InferRequestedOutput("OUTPUT0"), lib.InferRequestedOutput("OUTPUT1")]
    for i in shm_outputs:
        outputs[i].set_shared_memory(f"out{i}", ROW)
    return a, b, inputs, outputs


def test_inputs_and_outputs_through_shared_memory(client, regions):
    a, b, inputs, outputs = _add_sub_io(client)
    for name, value in (("in0", a), ("in1", b)):
        handle, _ = regions.make(name, ROW)
        shm.set_shared_memory_region(handle, [value])
    out0, _ = regions.make("out0", ROW)
    out1, _ = regions.make("out1", ROW)
    assert _status_names(client) == {"in0", "in1", "out0", "out1"}

    result = client.infer("add_sub", inputs, outputs=outputs)

    np.testing.assert_array_equal(shm.get_contents_as_numpy(out0, np.float32, [1, 16]), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out1, np.float32, [1, 16]), a - b)
    meta = result.get_output("OUTPUT0")
    if client.protocol == "grpc":
        assert (meta.datatype, list(meta.shape)) == ("FP32", [1, 16])
        assert result.get_response().raw_output_contents[0] == b""  # the data is in the region
    else:
        assert meta == {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 16]}

    # The same regions again with new contents: read at every request, not cached.
    shm.set_shared_memory_region(regions.handles["in0"][0], [a * 10])
    client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(out0, np.float32, [1, 16]), a * 10 + b
    )


def test_raw_and_shared_memory_inputs_mix(client, regions):
    """raw_input_contents then holds only the inputs not in shared memory (gRPC)."""
    a, b, inputs, outputs = _add_sub_io(client, shm_inputs=(1,), shm_outputs=(1,))
    handle, _ = regions.make("in1", ROW)
    shm.set_shared_memory_region(handle, [b])
    out1, _ = regions.make("out1", ROW)
    result = client.infer("add_sub", inputs, outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out1, np.float32, [1, 16]), a - b)


def test_offsets_within_a_region_and_an_object(client, regions):
    """One object, registered from an offset; tensors at offsets inside the region."""
    page = 4096
    handle, key = regions.make("big", page + 4 * ROW, register=False)
    a = np.arange(16, dtype=np.float32).reshape(1, 16)
    b = np.full((1, 16), 2, dtype=np.float32)
    shm.set_shared_memory_region(handle, [a, b], offset=page)
    client.register_system_shared_memory("big", key, 4 * ROW, page)
    lib = client.lib
    inputs = [lib.InferInput("INPUT0", [1, 16], "FP32"), lib.InferInput("INPUT1", [1, 16], "FP32")]
    inputs[0].set_shared_memory("big", ROW, 0)
    inputs[1].set_shared_memory("big", ROW, ROW)
    outputs = [lib.InferRequestedOutput("OUTPUT0"), lib.InferRequestedOutput("OUTPUT1")]
    outputs[0].set_shared_memory("big", ROW, 2 * ROW)
    outputs[1].set_shared_memory("big", ROW, 3 * ROW)
    client.infer("add_sub", inputs, outputs=outputs)
    got = shm.get_contents_as_numpy(handle, np.float32, [2, 16], offset=page + 2 * ROW)
    np.testing.assert_array_equal(got, np.concatenate([a + b, a - b]))


def test_bytes_tensors_through_shared_memory(client, regions):
    words = np.array([b"alpha", b"", "\u00e9t\u00e9".encode()], dtype=np.object_).reshape(1, 3)
    data = serialize_byte_tensor(words)
    size = len(data.item())
    handle, _ = regions.make("text_in", size)
    shm.set_shared_memory_region(handle, [data])
    out, _ = regions.make("text_out", 256)
    lib = client.lib
    inp = lib.InferInput("INPUT0", [1, 3], "BYTES")
    inp.set_shared_memory("text_in", size)
    req_out = lib.InferRequestedOutput("OUTPUT0")
    req_out.set_shared_memory("text_out", 256)
    client.infer("identity_bytes", [inp], outputs=[req_out])
    got = shm.get_contents_as_numpy(out, np.object_, [1, 3])
    assert list(got.reshape(-1)) == list(words.reshape(-1))


def _infer_error(client, inputs, outputs, model="add_sub"):
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs, outputs=outputs)
    return err.value


def _bad_request(client, err):
    if client.protocol == "grpc":
        assert err.status() == "StatusCode.INVALID_ARGUMENT", err
    else:
        assert err.status() == "400", err


def test_an_unregistered_region_is_invalid_argument_naming_it(client, regions):
    _, _, inputs, outputs = _add_sub_io(client, shm_outputs=())
    handle, _ = regions.make("in1", ROW)
    err = _infer_error(client, inputs, outputs)
    _bad_request(client, err)
    assert "Unable to find shared memory region: 'in0'" in err.message()


@pytest.mark.parametrize(
    "offset, byte_size, words",
    [
        (ROW, ROW, "Invalid offset for shared memory region: 'in0'"),
        (4, ROW, "Invalid offset + byte size for shared memory region: 'in0'"),
        (0, ROW - 4, "input byte size mismatch for input 'INPUT0' for model 'add_sub'. "
                     "Expected 64, got 60"),
    ],
)
def test_offsets_and_sizes_are_checked(client, regions, offset, byte_size, words):
    _, _, inputs, outputs = _add_sub_io(client, shm_inputs=(1,), shm_outputs=())
    regions.make("in0", ROW)
    handle, _ = regions.make("in1", ROW)
    inputs[0].set_shared_memory("in0", byte_size, offset)
    err = _infer_error(client, inputs, outputs)
    _bad_request(client, err)
    assert words in err.message()


def test_an_output_region_too_small_is_refused_with_both_sizes(client, regions):
    a, b, inputs, outputs = _add_sub_io(client, shm_inputs=(), shm_outputs=(0,))
    regions.make("out0", ROW // 2)
    outputs[0].set_shared_memory("out0", ROW // 2)
    err = _infer_error(client, inputs, outputs)
    _bad_request(client, err)
    assert ("shared memory size specified with the request for output 'OUTPUT0' (32 bytes) "
            "should be at least 64 bytes to hold the results") in err.message()


def test_classification_and_shared_memory_do_not_mix(client, regions):
    _, _, inputs, outputs = _add_sub_io(client, shm_inputs=(), shm_outputs=())
    regions.make("out0", ROW)
    outputs = [client.lib.InferRequestedOutput("OUTPUT0")]
    outputs[0].set_shared_memory("out0", ROW)
    # Both at once, which tritonclient itself refuses to send:
    if client.protocol == "grpc":
        outputs[0]._output.parameters["classification"].int64_param = 2
    else:
        outputs[0]._parameters["classification"] = 2
    err = _infer_error(client, inputs, outputs)
    _bad_request(client, err)
    assert "shared_memory_region' and 'classification'" in err.message()


def test_registration_errors(client, regions):
    handle, key = regions.make("taken", ROW)
    with pytest.raises(InferenceServerException) as err:
        client.register_system_shared_memory("taken", key, ROW)
    assert "shared memory region 'taken' already in manager" in err.value.message()
    assert err.value.status() in ("StatusCode.ALREADY_EXISTS", "409")

    cases = [
        ("missing", "/tg_no_such_object", ROW, 0, "Unable to open shared memory region: "
                                                  "'/tg_no_such_object'"),
        ("too_big", key, ROW + 1, 0, "failed to register shared memory region 'too_big': "
                                     "invalid args"),
        ("past_end", key, ROW, 1, "invalid args"),
        ("root", "/", ROW, 0, "invalid shm key '/'"),
        ("escape", "/../../etc/passwd", ROW, 0, "invalid shm key"),
    ]
    for name, bad_key, size, offset, words in cases:
        with pytest.raises(InferenceServerException) as err:
            client.register_system_shared_memory(name, bad_key, size, offset)
        assert words in err.value.message(), name
        assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "400"), name
    assert _status_names(client) == {"taken"}

    with pytest.raises(InferenceServerException) as err:
        client.get_system_shared_memory_status("nope")
    assert "Unable to find system shared memory region: 'nope'" in err.value.message()
    assert err.value.status() in ("StatusCode.NOT_FOUND", "404")

    client.unregister_system_shared_memory("nope")  # unknown: not an error, as Triton
    client.unregister_system_shared_memory("taken")
    assert _status_names(client) == set()


def test_a_truncated_object_is_refused_not_a_crash(client, server, regions):
    """Reading a mapping past its object's end would fault the server (SIGBUS)."""
    _, _, inputs, outputs = _add_sub_io(client, shm_outputs=())
    regions.make("in0", ROW)
    handle, key = regions.make("in1", ROW)
    os.truncate("/dev/shm" + key, 0)
    err = _infer_error(client, inputs, outputs)
    _bad_request(client, err)
    assert "shared memory region 'in1'" in err.message() and "register it again" in err.message()
    assert client.is_server_live() and server.proc.poll() is None


def test_truncation_racing_requests_is_never_a_crash(client, server, regions):
    """The object cut and regrown while requests read and write it: through a mapping,
    the access after the size check faulted and SIGBUS ended the server (found by
    bench/fuzz_scale.py, bench/results/2026-12-07-fuzz). Each request now succeeds or
    is refused; the server lives."""
    import threading

    a, b, inputs, outputs = _add_sub_io(client, shm_inputs=(0, 1), shm_outputs=(0,))
    for name, value in (("in0", a), ("in1", b)):
        handle, _ = regions.make(name, ROW)
        shm.set_shared_memory_region(handle, [value])
    regions.make("out0", ROW)
    paths = ["/dev/shm" + key for _, key in regions.handles.values()]
    stop = threading.Event()

    def cut():
        while not stop.is_set():
            for path in paths:
                os.truncate(path, 0)
            for path in paths:
                os.truncate(path, ROW)

    cutter = threading.Thread(target=cut, daemon=True)
    cutter.start()
    answers = {"ok": 0, "refused": 0}
    try:
        for _ in range(300):
            try:
                client.infer("add_sub", inputs, outputs=outputs)
                answers["ok"] += 1
            except InferenceServerException as exc:
                assert "now holds" in exc.message(), exc.message()
                answers["refused"] += 1
    finally:
        stop.set()
        cutter.join()
    assert server.proc.poll() is None and client.is_server_live(), answers
    assert answers["refused"] > 0, answers  # the race was run into, not missed


def test_unregistering_while_in_use_keeps_answers_right(server, client, regions):
    """Unregister-all between requests that use the regions: the next one is refused by
    name; registered again, it works (no stale mapping)."""
    a, b, inputs, outputs = _add_sub_io(client, shm_outputs=())
    for name, value in (("in0", a), ("in1", b)):
        handle, _ = regions.make(name, ROW)
        shm.set_shared_memory_region(handle, [value])
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), a + b)
    client.unregister_system_shared_memory()
    err = _infer_error(client, inputs, None)
    assert "Unable to find shared memory region" in err.message()
    for name in ("in0", "in1"):
        client.register_system_shared_memory(name, regions.handles[name][1], ROW)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT1"), a - b)


def test_off_by_default_for_system_and_cuda_regions(test_repo, tmp_path):
    """The module-wide server of other tests runs without --allow-client-shm."""
    with start_server(test_repo) as srv:
        g = grpcclient.InferenceServerClient(srv.grpc_url)
        h = httpclient.InferenceServerClient(srv.http_url)
        assert len(g.get_system_shared_memory_status().regions) == 0
        assert h.get_system_shared_memory_status() == []
        for c in (g, h):
            with pytest.raises(InferenceServerException) as err:
                c.register_system_shared_memory("r", "/tg_any", 64)
            assert "Client shared memory is disabled" in err.value.message()
            assert "--allow-client-shm=true" in err.value.message()
            assert err.value.status() in ("StatusCode.UNIMPLEMENTED", "501")
            handle = base64.b64encode(b"\1" * 64)
            with pytest.raises(InferenceServerException) as err:
                c.register_cuda_shared_memory("c", handle if c is g else handle.decode(), 0, 64)
            assert "Client shared memory is disabled" in err.value.message()
        inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_shared_memory("r", ROW)
        inp1 = grpcclient.InferInput("INPUT1", [1, 16], "FP32")
        inp1.set_data_from_numpy(np.zeros((1, 16), np.float32))
        with pytest.raises(InferenceServerException) as err:
            g.infer("add_sub", [inp, inp1])
        assert "Client shared memory is disabled" in err.value.message()
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
        g.close()
        h.close()


def test_cuda_regions_refused_precisely_status_and_unregister_as_triton(client, regions):
    """CUDA shared memory over both protocols with a handle no process exported: where
    the server has no CUDA device, the refusal says what is missing; one namespace with
    system regions, status and unregister as Triton's."""
    handle = base64.b64encode(b"\1" * 64)
    handle = handle if client.protocol == "grpc" else handle.decode()
    with pytest.raises(InferenceServerException) as err:
        client.register_cuda_shared_memory("c", handle, 0, 64)
    message = err.value.message()
    assert err.value.status() in ("StatusCode.INVALID_ARGUMENT", "400"), message
    if "GPUs not supported" in message:  # a server without CUDA
        assert "failed to register CUDA shared memory region: 'c', GPUs not supported: " \
            "no CUDA " in message
    else:  # a GPU server: the handle opens nothing
        assert "failed to register shared memory region 'c': invalid args" in message
    with pytest.raises(InferenceServerException) as err:
        client.get_cuda_shared_memory_status("c")
    assert "Unable to find cuda shared memory region: 'c'" in err.value.message()
    assert err.value.status() in ("StatusCode.NOT_FOUND", "404")
    client.unregister_cuda_shared_memory("c")  # unknown: OK
    client.unregister_cuda_shared_memory()
    status = client.get_cuda_shared_memory_status()
    assert len(status.regions if client.protocol == "grpc" else status) == 0
    regions.make("sysr", ROW)
    with pytest.raises(InferenceServerException) as err:
        client.register_cuda_shared_memory("sysr", handle, 0, 64)
    assert "shared memory region 'sysr' already in manager" in err.value.message()
    assert err.value.status() in ("StatusCode.ALREADY_EXISTS", "409")
    with pytest.raises(InferenceServerException) as err:
        client.get_cuda_shared_memory_status("sysr")
    assert "registered as system shared memory, not CUDA" in err.value.message()


def test_half_given_parameters_are_refused_in_tritons_words(server):
    """Raw gRPC: parameters tritonclient would never send."""
    from tensorgate._proto.inference import grpc_service_pb2 as pb
    from tensorgate._proto.inference import grpc_service_pb2_grpc as pb_grpc

    def request(**params):
        req = pb.ModelInferRequest(model_name="identity_fp32")
        t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
        for key, value in params.items():
            setattr(t.parameters[key], value[0], value[1])
        return req

    cases = [
        ({"shared_memory_offset": ("int64_param", 0)},
         "'shared_memory_offset' can not be specified without 'shared_memory_region'"),
        ({"shared_memory_region": ("string_param", "r")},
         "'shared_memory_byte_size' must be specified along with 'shared_memory_region'"),
        ({"shared_memory_region": ("int64_param", 3), "shared_memory_byte_size": ("int64_param", 16)},
         "invalid value type for 'shared_memory_region' parameter"),
        ({"shared_memory_region": ("string_param", "r"),
          "shared_memory_byte_size": ("string_param", "16")},
         "invalid value type for 'shared_memory_byte_size' parameter"),
    ]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for params, words in cases:
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(request(**params), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in err.value.details(), params
