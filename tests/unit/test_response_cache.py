"""The response cache's parts on their own: the LRU by bytes, the request key (what
changes it, what does not), entries (copies, read-only), the Redis value layout, the
cache's bookkeeping of versions, a Redis that is down, and the settings and config
switches that turn it on."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from types import SimpleNamespace

import numpy as np
import pytest
from google.protobuf import text_format

from tensorgate._ext.codec import decode_infer_request
from tensorgate._proto.inference import grpc_service_pb2 as ipb
from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.cache import ResponseCache, request_key
from tensorgate.cache.lru import LRU
from tensorgate.cache.remote import decode_value, encode_value, shown_url
from tensorgate.cache.response import make_entry
from tensorgate.dtypes import BY_WIRE
from tensorgate.errors import ModelLoadError
from tensorgate.observability.stats import VersionStats
from tensorgate.repository import config as repository_config
from tensorgate.repository.config import GraphTensor, ParsedConfig, complete_config
from tensorgate.runtime.model import READY
from tensorgate.settings import add_arguments, from_sources, parse_cache_size, triton_flag_error
from tensorgate.tensors import TensorSpec, request_inputs, requested_outputs

# --------------------------------------------------------------------------- LRU


class Sized:
    def __init__(self, size: int) -> None:
        self.size = size


def test_lru_evicts_least_recently_used_by_bytes():
    evicted = []
    lru = LRU(100, lambda k, e: evicted.append(k))
    for key in "abc":
        assert lru.put(key, Sized(30))
    assert lru.get("a") is not None  # a is now the most recent: b goes first
    lru.put("d", Sized(30))
    assert evicted == ["b"] and lru.bytes == 90 and len(lru) == 3
    lru.put("e", Sized(50))
    assert evicted == ["b", "c", "a"] and lru.keys() == ["d", "e"] and lru.bytes == 80
    assert lru.evictions == 3


def test_lru_refuses_an_entry_over_capacity_and_replaces_in_place():
    lru = LRU(100)
    assert not lru.put("big", Sized(101)) and len(lru) == 0
    lru.put("a", Sized(40))
    lru.put("a", Sized(60))
    assert lru.bytes == 60 and len(lru) == 1 and lru.evictions == 0
    assert lru.pop("a").size == 60 and lru.bytes == 0 and lru.pop("a") is None


# --------------------------------------------------------------------------- the key

SPECS = {"INPUT0": TensorSpec("INPUT0", BY_WIRE["FP32"], (4,), None),
         "TEXT": TensorSpec("TEXT", BY_WIRE["BYTES"], (1,), None)}
OUTS = {"OUTPUT0": TensorSpec("OUTPUT0", BY_WIRE["FP32"], (4,), None),
        "OUTPUT1": TensorSpec("OUTPUT1", BY_WIRE["FP32"], (4,), None)}


def _key(values=(1.0, 2.0, 3.0, 4.0), text=b"hi", typed=False, outputs=(), shape=(1, 4),
         request_id="", parameters=None, input_params=None):
    req = ipb.ModelInferRequest(model_name="m", id=request_id)
    x = np.array(values, np.float32).reshape(shape)
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=list(shape))
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[shape[0], 1])
    if typed:
        inp.contents.fp32_contents.extend(x.reshape(-1).tolist())
        t.contents.bytes_contents.extend([text] * shape[0])
    else:
        req.raw_input_contents.append(x.tobytes())
        req.raw_input_contents.append((len(text).to_bytes(4, "little") + text) * shape[0])
    for name, classes in outputs:
        out = req.outputs.add(name=name)
        if classes:
            out.parameters["classification"].int64_param = classes
    for key, value in (parameters or {}).items():
        req.parameters[key].int64_param = value
    for key, value in (input_params or {}).items():
        inp.parameters[key].string_param = value
    request = decode_infer_request(req.SerializeToString())
    specs = dict(SPECS)
    if shape != (1, 4):
        specs["INPUT0"] = TensorSpec("INPUT0", BY_WIRE["FP32"], (-1,), None)
    arrays, _, _ = request_inputs(request, specs, 8, "m")
    return request_key(request, arrays, requested_outputs(request, OUTS, "m"))


def test_key_is_stable_and_follows_the_inputs():
    assert _key() == _key() and len(_key()) == 32
    assert _key(values=(1.0, 2.0, 3.0, 5.0)) != _key()
    assert _key(text=b"ho") != _key()
    assert _key(shape=(2, 2)) != _key(shape=(1, 4))  # another shape


def test_key_ignores_what_does_not_change_the_answer():
    assert _key(typed=True) == _key()  # typed or raw contents: one tensor
    assert _key(request_id="abc", parameters={"priority": 1, "timeout": 5}) == _key()


def test_key_follows_the_outputs_asked_for():
    everything = _key()
    one = _key(outputs=[("OUTPUT0", 0)])
    both = _key(outputs=[("OUTPUT0", 0), ("OUTPUT1", 0)])
    swapped = _key(outputs=[("OUTPUT1", 0), ("OUTPUT0", 0)])
    top2 = _key(outputs=[("OUTPUT0", 2)])
    top3 = _key(outputs=[("OUTPUT0", 3)])
    assert len({everything, one, both, swapped, top2, top3}) == 6


def test_shared_memory_requests_have_no_key():
    class Region:  # what request_inputs reads from a registered region
        def input_bytes(self, name, params):
            return np.zeros(4, np.float32).tobytes()

    req = ipb.ModelInferRequest(model_name="m")
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
    inp.parameters["shared_memory_region"].string_param = "r"
    inp.parameters["shared_memory_byte_size"].int64_param = 16
    t = req.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
    del t
    req.raw_input_contents.append(b"\x02\x00\x00\x00hi")
    request = decode_infer_request(req.SerializeToString())
    arrays, _, _ = request_inputs(request, SPECS, 8, "m", shared_memory=Region())
    assert request_key(request, arrays, None) is None


# --------------------------------------------------------------------------- entries, values


def test_entries_hold_read_only_copies_of_tensors_and_outputs():
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    view = batch[:1]  # a request's rows of a batch's output
    scores = batch[1:]
    text = np.array([["a", "bc"]], dtype=object)
    outputs = {"OUTPUT0": view, "SCORES": scores, "TEXT": text}
    tensors = [("OUTPUT0", "FP32", view.shape, view),  # as it came
               ("SCORES", "BYTES", (1, 1), b"\x05\x00\x00\x007.0:3"),  # top-1 classes
               ("TEXT", "BYTES", (1, 2), b"\x01\x00\x00\x00a\x02\x00\x00\x00bc")]
    entry = make_entry(None, tensors, outputs)
    batch[:] = 99.0  # the batch buffer changes later: the entry does not
    kept = entry.tensors[0][3]
    assert kept[0, 0] == 0.0 and not kept.flags.writeable and kept.base is None
    assert entry.outputs["OUTPUT0"] is kept  # one copy for the tensor and the output
    assert entry.outputs["SCORES"][0, 0] == 4.0  # every output, for observers and shadows
    assert list(entry.outputs["TEXT"].flat) == ["a", "bc"]
    assert entry.tensors[1][3] == tensors[1][3]
    assert entry.size > kept.nbytes * 2 + 2 * 56 + 3


def test_redis_values_round_trip_every_datatype():
    outputs = {
        "B": np.array([[True, False]]), "H": np.array([1.5, -2.0], np.float16),
        "I": np.array([[-7]], np.int64), "E": np.zeros((0, 3), np.float32),
        "T": np.array([["\u00e9t\u00e9", ""]], dtype=object), "U": np.arange(4, dtype=np.uint8),
    }
    tensors = [(name, wire, outputs[name].shape, outputs[name])
               for name, wire in (("B", "BOOL"), ("H", "FP16"), ("I", "INT64"), ("E", "FP32"))]
    tensors += [("T", "BYTES", (1, 2), b"\x05\x00\x00\x00\xc3\xa9t\xc3\xa9\x00\x00\x00\x00"),
                ("U", "INT32", (4,), np.arange(4, dtype=np.int32))]  # converted: stored apart
    back, back_outputs = decode_value(encode_value(tensors, outputs))
    assert [(n, d, s) for n, d, s, _ in back] == [(n, d, s) for n, d, s, _ in tensors]
    for (_, _, _, want), (_, _, _, got) in zip(tensors, back):
        if isinstance(want, bytes):
            assert got == want
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want)
    assert back[0][3] is back_outputs["B"]  # stored once
    assert set(back_outputs) == set(outputs)
    for name, want in outputs.items():
        got = back_outputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert list(got.flat) == list(want.flat)
    value = encode_value(tensors, outputs)
    for bad in (b"", b"nope", value[:-1], value + b"x", value[:12]):
        with pytest.raises(ValueError):
            decode_value(bad)


def test_urls_lose_their_credentials_in_logs():
    assert shown_url("redis://:secret@h:6379/0") == "redis://h:6379/0"
    assert shown_url("rediss://user:pw@h/1") == "rediss://h/1"


# --------------------------------------------------------------------------- versions


def _version(name: str, version: int, cache: bool = True):
    config = mc.ModelConfig(name=name)
    config.response_cache.enable = cache
    return SimpleNamespace(name=name, version=version, version_str=str(version),
                           label=f"{name}:{version}", config=config, state=READY,
                           stats=VersionStats(), labels={})


class Repository:
    def __init__(self, *models) -> None:
        self.serving = list(models)

    def models(self):
        return list(self.serving)

    def versions_of(self, name):
        return [m for m in self.serving if m.name == name]


def test_versions_keep_apart_and_leave_with_their_entries():
    a1, a2, plain = _version("a", 1), _version("a", 2), _version("p", 1, cache=False)
    repo = Repository(a1, plain)
    cache = ResponseCache(1 << 20, repo)
    asyncio.run(cache("loaded", "a"))
    asyncio.run(cache("loaded", "p"))
    v1 = a1.response_cache
    assert v1 is not None and plain.response_cache is None
    out = np.array([[1.0]], np.float32)
    answer, outputs = [("OUTPUT0", "FP32", (1, 1), out)], {"OUTPUT0": out}
    v1.put(b"k" * 32, answer, outputs)
    assert v1.get(b"k" * 32) is not None
    repo.serving = [a2, plain]  # version 2 replaced version 1
    asyncio.run(cache("loaded", "a"))
    v2 = a2.response_cache
    assert v2.get(b"k" * 32) is None  # another version: never version 1's answer
    assert len(cache.lru) == 0 and v1.closed
    v1.put(b"j" * 32, answer, outputs)  # a request of version 1 still in flight: not kept
    assert len(cache.lru) == 0
    v2.put(b"k" * 32, answer, outputs)
    v2.hit(5)
    v2.miss(7)
    assert (a2.stats.cache_hit.count, a2.stats.cache_miss.count) == (1, 1)
    assert (cache.lookups, cache.hits, cache.misses) == (2, 1, 1)
    repo.serving = [plain]
    asyncio.run(cache("unloading", "a"))
    assert len(cache.lru) == 0 and cache.lru.bytes == 0


# --------------------------------------------------------------------------- Redis down


def test_a_redis_that_is_down_is_a_miss_and_one_warning(caplog):
    pytest.importorskip("redis")
    from tensorgate.cache.remote import RedisTier

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        tier = RedisTier(f"redis://:pw@127.0.0.1:{port}/0", ttl_secs=60)
        try:
            first = await tier.get("k")
            second = await tier.get("k")  # resting after the failure: not even tried
            tier.store("k", b"v")
            return first, second, tier
        finally:
            await tier.close()

    with caplog.at_level(logging.WARNING, "tensorgate.cache"):
        first, second, tier = asyncio.run(main())
    assert first is None and second is None
    assert tier.errors == 1 and tier.skipped == 2
    warnings = [r for r in caplog.records if "Redis at" in r.getMessage()]
    assert len(warnings) == 1 and "pw" not in warnings[0].getMessage()


# --------------------------------------------------------------------------- switches


def _settings(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_sources(parser.parse_args(argv), {})


@pytest.mark.parametrize("raw, size", [
    ("0", 0), ("1048576", 1 << 20), ("64M", 64 << 20), ("1G", 1 << 30), ("4k", 4096),
    ("64MiB", 64 << 20), ("2GB", 2 << 30), ("local,size=1048576", 1 << 20),
    ("local,size=8M", 8 << 20),
])
def test_cache_sizes(raw, size):
    assert parse_cache_size(raw) == size


@pytest.mark.parametrize("raw, message", [
    ("lots", "such as 1048576, 64M or 1G"), ("-1", "such as"),
    ("redis,host=h,port=6379", "--cache-redis-url"), ("local,bytes=5", "size=N only"),
    ("memcached,size=5", "implementation 'memcached'"),
])
def test_bad_cache_sizes_say_what_works(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_cache_size(raw)


def test_tritons_cache_flags_set_the_size():
    assert _settings(["--cache-config", "local,size=65536"]).cache_size == 65536
    assert _settings(["--cache-config=local,size=1M"]).cache_size == 1 << 20
    assert _settings(["--response-cache-byte-size", "4096"]).cache_size == 4096
    assert triton_flag_error(["--cache-config", "--response-cache-byte-size"]) is None
    with pytest.raises(ValueError, match="--cache-redis-url needs --cache-size"):
        _settings(["--cache-redis-url", "redis://127.0.0.1:6379/0"])
    s = _settings(["--cache-size", "1M", "--cache-redis-url", "redis://h:1/0"])
    assert s.cache_redis_ttl_secs == 3600


def _complete(text: str):
    parsed = ParsedConfig(text_format.Parse(text, mc.ModelConfig()), True)
    graph = [GraphTensor("X", "tensor(float)", (-1, 4))]
    return complete_config(parsed, "m", graph, graph, 4)


def test_config_response_cache_needs_the_server_cache(monkeypatch):
    monkeypatch.setattr(repository_config, "RESPONSE_CACHE", False)
    with pytest.raises(ModelLoadError, match=r"response_cache .* --cache-size"):
        _complete("max_batch_size: 4 response_cache { enable: true }")
    monkeypatch.setattr(repository_config, "RESPONSE_CACHE", True)
    assert _complete("max_batch_size: 4 response_cache { enable: true }").response_cache.enable


def test_ensembles_are_not_cached(caplog):
    pipeline = _version("pipe", 1)
    pipeline.config.ensemble_scheduling.step.add(model_name="a")
    cache = ResponseCache(1 << 20, Repository(pipeline))
    with caplog.at_level(logging.WARNING, "tensorgate.cache"):
        assert cache.attach(pipeline) is None
    assert pipeline.response_cache is None and "ensemble" in caplog.text
