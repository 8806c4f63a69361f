"""Helpers for the routing end-to-end tests: a raw-bytes ModelInfer caller (fast enough
for 10,000 requests) and the control-plane stub."""

from __future__ import annotations

import threading
import time
from collections import Counter

import grpc
import numpy as np

from tensorgate._proto.inference import grpc_service_pb2 as ipb
from tensorgate._proto.tensorgate.v1 import control_pb2 as cpb
from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

INFER = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str, value: float = 1.0, route_key: str | None = None,
                  version: str = "") -> bytes:
    """A serialized ModelInferRequest for a [1, 1] FP32 INPUT0 (the canary/swap models)."""
    req = ipb.ModelInferRequest(model_name=model, model_version=version)
    inp = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    del inp  # raw contents below
    req.raw_input_contents.append(np.array([[value]], np.float32).tobytes())
    if route_key is not None:
        req.parameters["route_key"].string_param = route_key
    return req.SerializeToString()


class Caller:
    def __init__(self, url: str) -> None:
        self.channel = grpc.insecure_channel(url)
        self._call = self.channel.unary_unary(INFER)
        self.control = control_pb2_grpc.RoutingServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def metadata(self, name: str):
        call = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=ipb.ModelMetadataRequest.SerializeToString,
            response_deserializer=ipb.ModelMetadataResponse.FromString,
        )
        return call(ipb.ModelMetadataRequest(name=name), timeout=10)

    def infer(self, body: bytes, metadata=None, timeout: float = 10.0):
        """(model_name, model_version, OUTPUT0 value) of one raw request."""
        reply = ipb.ModelInferResponse.FromString(
            self._call(body, timeout=timeout, metadata=metadata)
        )
        out = np.frombuffer(reply.raw_output_contents[0], np.float32)[0]
        return reply.model_name, reply.model_version, float(out)

    def versions(self, body: bytes, n: int, threads: int = 8) -> Counter:
        """Send ``body`` n times from ``threads`` threads; Counter of serving versions."""
        counts: Counter = Counter()
        lock = threading.Lock()
        per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

        def work(k: int) -> None:
            local: Counter = Counter()
            for _ in range(k):
                reply = ipb.ModelInferResponse.FromString(self._call(body, timeout=30))
                local[reply.model_version] += 1
            with lock:
                counts.update(local)

        pool = [threading.Thread(target=work, args=(k,)) for k in per]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return counts


class Hammer:
    """Threads sending one request after another until stopped; counts outcomes."""

    def __init__(self, url: str, body: bytes, threads: int = 4) -> None:
        self.url = url
        self.body = body
        self.ok: Counter = Counter()  # serving version -> count
        self.errors: Counter = Counter()  # status code name -> count
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    def _work(self) -> None:
        with grpc.insecure_channel(self.url) as channel:
            call = channel.unary_unary(INFER)
            while not self._stop.is_set():
                try:
                    reply = ipb.ModelInferResponse.FromString(call(self.body, timeout=30))
                    with self._lock:
                        self.ok[reply.model_version] += 1
                except grpc.RpcError as exc:
                    with self._lock:
                        self.errors[exc.code().name] += 1
                        if len(self.messages) < 20:
                            self.messages.append(exc.details() or "")

    def __enter__(self) -> "Hammer":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.ok.values()) + sum(self.errors.values())

    def wait_for(self, n: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        start = self.total
        while self.total - start < n and time.monotonic() < deadline:
            time.sleep(0.01)


def route(name: str, *targets, sticky: bool = False, shadow=None) -> cpb.Route:
    """route("ab", ("canary", "1", 90), ("canary", "2", 10))"""
    r = cpb.Route(name=name, sticky=sticky)
    for model, version, weight in targets:
        r.targets.add(model=model, version=version, weight=weight)
    if shadow is not None:
        model, version, fraction = shadow
        r.shadow.CopyFrom(cpb.Shadow(model=model, version=version, fraction=fraction))
    return r


def binomial_bound(n: int, p: float, sigmas: float = 4.0) -> float:
    return sigmas * (n * p * (1 - p)) ** 0.5
