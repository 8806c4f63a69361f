"""The Cython codec under atheris (libFuzzer), built with ASan and UBSan.

Each input is one fuzzed byte string. Its first byte picks what it feeds:

- ``decode_infer_request`` on the rest (what ModelInfer and every stream message go
  through), held to the protobuf library as the oracle where the codec accepts (as
  tests/unit/test_codec.py's ``assert_sane``: protobuf must accept too and agree on every
  field but parameters); an accepted request is then answered: its raw inputs are
  echoed through ``encode_infer_response`` and ``encode_stream_response`` and the bytes
  parsed back by protobuf;
- ``decode_bytes_tensor`` on the rest with an element count from the next two bytes,
  and what it splits re-encoded by ``encode_bytes_tensor`` to the same bytes;
- jsondata's ``split_input_data`` and ``parse_data`` on the rest as an HTTP infer header.

A WireError / BytesTensorError / ValueError is an answer, not a finding; any other
exception, an oracle mismatch, or a sanitizer report is. Build and run (README of
bench/results/2026-12-07-fuzz):

    bench/fuzz_codec_build.sh /tmp/asan-build
    LD_PRELOAD=$(.venv/bin/python -c 'import atheris, os; print(os.path.join(
        atheris.path(), "asan_with_fuzzer.so"))') \\
    ASAN_OPTIONS=detect_leaks=0,allocator_may_return_null=1 \\
    .venv/bin/python bench/fuzz_codec_atheris.py --build-dir /tmp/asan-build \\
        -max_total_time=120 -print_final_stats=1 /tmp/codec-corpus

Without --build-dir the installed (uninstrumented) extension is fuzzed, which finds
Python-level failures only.
"""

from __future__ import annotations

import os
import struct
import sys

import atheris

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(argv: list[str]):
    """(codec, jsondata) from --build-dir (the ASan build) or the installed package."""
    build = None
    if "--build-dir" in argv:
        i = argv.index("--build-dir")
        build = argv[i + 1]
        del argv[i:i + 2]
    if build:
        sys.path.insert(0, build)
        from tgasan import codec, jsondata
    else:
        from tensorgate._ext import codec, jsondata
    return codec, jsondata


codec, jsondata = _load(sys.argv)
with atheris.instrument_imports():
    from google.protobuf.message import DecodeError
    from tensorgate._proto.inference import grpc_service_pb2 as pb

CONTENT_FIELDS = ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                  "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents")
JSON_TYPES = ("FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
              "UINT32", "UINT64", "BOOL", "FP16", "BF16", "BYTES", "")


def _same_contents(ours: dict, theirs) -> None:
    present = {name for name in CONTENT_FIELDS if len(getattr(theirs, name))}
    assert set(ours) == present, (sorted(ours), sorted(present))
    for name in present:
        want = list(getattr(theirs, name))
        got = ours[name]
        if name == "bytes_contents":
            assert got == want, name
        elif name in ("fp32_contents", "fp64_contents"):
            fmt = "<f" if name == "fp32_contents" else "<d"
            assert [struct.pack(fmt, v) for v in got.tolist()] == [
                struct.pack(fmt, v) for v in want], name
        else:
            assert got.tolist() == want, name


def check_request(data: bytes) -> None:
    try:
        ours = codec.decode_infer_request(data)
    except codec.WireError:
        return  # protobuf may still accept (it skips groups, which we refuse)
    try:
        theirs = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        raise AssertionError("the codec accepted what protobuf refuses") from None
    assert (ours.model_name, ours.model_version, ours.id) == (
        theirs.model_name, theirs.model_version, theirs.id)
    assert len(ours.inputs) == len(theirs.inputs)
    for got, want in zip(ours.inputs, theirs.inputs):
        assert (got.name, got.datatype, got.shape) == (want.name, want.datatype,
                                                        tuple(want.shape))
        _same_contents(got.contents, want.contents)
    assert [o.name for o in ours.outputs] == [o.name for o in theirs.outputs]
    raws = [bytes(v) for v in ours.raw_input_contents]
    assert raws == list(theirs.raw_input_contents)
    answer(ours, raws)


def answer(req, raws: list[bytes]) -> None:
    """Echo the request's raw inputs as a response and parse it back."""
    outputs = []
    for tensor, raw in zip(req.inputs, raws):
        if all(-(2**63) <= d < 2**63 for d in tensor.shape):
            outputs.append((tensor.name, tensor.datatype, tensor.shape, raw))
    params = {}
    for key, value in req.parameters.items():
        if isinstance(value, (bool, str)) or (isinstance(value, int)
                                              and -(2**63) <= value < 2**63):
            params[key] = value
    try:
        body = codec.encode_infer_response(req.model_name, req.model_version, req.id,
                                           outputs, params)
    except (ValueError, TypeError, OverflowError):
        return
    back = pb.ModelInferResponse.FromString(body)
    assert (back.model_name, back.model_version, back.id) == (
        req.model_name, req.model_version, req.id)
    assert list(back.raw_output_contents) == [o[3] for o in outputs]
    assert [(o.name, o.datatype, tuple(o.shape)) for o in back.outputs] == [
        (o[0], o[1], tuple(o[2])) for o in outputs]
    stream = pb.ModelStreamInferResponse.FromString(codec.encode_stream_response(body))
    assert stream.infer_response == back
    error = req.model_name  # any text, as an error_message
    stream = pb.ModelStreamInferResponse.FromString(
        codec.encode_stream_response(None, error))
    assert stream.error_message == error


def check_bytes_tensor(data: bytes) -> None:
    if len(data) < 2:
        return
    count = int.from_bytes(data[:2], "little") % 1024
    try:
        flat = codec.decode_bytes_tensor(data[2:], count)
    except (codec.BytesTensorError, ValueError):
        return
    assert len(flat) == count
    assert codec.encode_bytes_tensor(flat) == bytes(data[2:])


def check_json(data: bytes) -> None:
    if not data:
        return
    datatype = JSON_TYPES[data[0] % len(JSON_TYPES)]
    header = data[1:]
    split = jsondata.split_input_data(header)
    if split is None:
        return
    rest, spans = split
    assert isinstance(rest, bytes)
    for _index, start, end in spans:
        assert 0 <= start <= end <= len(header), (start, end, len(header))
        parsed = jsondata.parse_data(header, start, end, datatype)
        if parsed is not None:
            raw, nonfinite = parsed
            assert isinstance(raw, bytes) and isinstance(nonfinite, bool)


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    if mode <= 1:  # half the inputs: the request decoder, the hottest surface
        check_request(rest)
    elif mode == 2:
        check_bytes_tensor(rest)
    else:
        check_json(rest)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
