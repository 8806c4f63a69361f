"""The few non-hot RPCs the harness makes: metadata, config, readiness, statistics.

Synchronous grpc with the generated protobuf classes: these run a handful of times per
step, outside the measured window, so clarity beats speed here. A server that doesn't
implement an RPC (an echo server without ModelStatistics, say) gives None, never an
exception: the harness reports what the server can tell and leaves the rest blank.
"""

from __future__ import annotations

import time

import grpc

# The v2 classes generated into TensorGate's private descriptor pool (they coexist
# with tritonclient's copies in one process).
from tensorgate._proto.inference import grpc_service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"
# Codes meaning "this server can't tell", as opposed to a broken server.
_NOT_OFFERED = {grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}
_STAT_FIELDS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class ServerError(RuntimeError):
    """The server can't be measured as asked (unknown model, never ready)."""


class ServerControl:
    """Control-plane calls to one server; a context manager closing its channel."""

    def __init__(self, url: str, headers: dict[str, str] | None = None,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._metadata = tuple((headers or {}).items()) or None
        self._channel = grpc.insecure_channel(url)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> ServerControl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, request, response_cls):
        rpc = self._channel.unary_unary(
            SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        return rpc(request, timeout=self.timeout_s, metadata=self._metadata)

    def _maybe(self, method: str, request, response_cls):
        try:
            return self._call(method, request, response_cls)
        except grpc.RpcError as exc:
            if exc.code() in _NOT_OFFERED:
                return None
            raise

    def wait_model_ready(self, model: str, version: str = "", timeout_s: float = 30.0) -> None:
        """Block until ModelReady is true (servers without ModelReady count as ready)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                answer = self._call("ModelReady", pb.ModelReadyRequest(name=model, version=version),
                                    pb.ModelReadyResponse)
                if answer.ready:
                    return
                last = "ModelReady answered false"
                # Some servers answer false, not NOT_FOUND, for a model they don't
                # know; their ModelMetadata tells unknown from still loading.
                self._call("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version),
                           pb.ModelMetadataResponse)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # unknown: waiting won't help
                    raise ServerError(f"{self.url}: {exc.details()}") from None
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.1)
        raise ServerError(f"{model} not ready on {self.url} after {timeout_s:.0f} s ({last})")

    def model_metadata(self, model: str, version: str = "") -> dict | None:
        """{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]} or None."""
        answer = self._maybe("ModelMetadata", pb.ModelMetadataRequest(name=model, version=version),
                             pb.ModelMetadataResponse)
        if answer is None:
            return None

        def tensors(items):
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {"inputs": tensors(answer.inputs), "outputs": tensors(answer.outputs)}

    def max_batch_size(self, model: str, version: str = "") -> int | None:
        answer = self._maybe("ModelConfig", pb.ModelConfigRequest(name=model, version=version),
                             pb.ModelConfigResponse)
        return None if answer is None else int(answer.config.max_batch_size)

    def statistics(self, model: str, version: str = "") -> dict | None:
        """Cumulative counters summed over the model's versions, or None.

        {"inference_count", "execution_count", "<field>_count", "<field>_ns"} for each
        of success, fail, queue, compute_input, compute_infer, compute_output.
        """
        answer = self._maybe("ModelStatistics",
                             pb.ModelStatisticsRequest(name=model, version=version),
                             pb.ModelStatisticsResponse)
        if answer is None or not answer.model_stats:
            return None
        totals = {"inference_count": 0, "execution_count": 0}
        for stats in answer.model_stats:
            if stats.name and stats.name != model:
                continue
            totals["inference_count"] += stats.inference_count
            totals["execution_count"] += stats.execution_count
            for name in _STAT_FIELDS:
                duration = getattr(stats.inference_stats, name)
                totals[f"{name}_count"] = totals.get(f"{name}_count", 0) + duration.count
                totals[f"{name}_ns"] = totals.get(f"{name}_ns", 0) + duration.ns
        return totals


def stats_delta(before: dict | None, after: dict | None) -> dict | None:
    """The server's own account of one step, from statistics() before and after it.

    Averages per successful request, in µs: time queued, and compute (input + infer +
    output); plus the mean batch the server executed (inferences per execution). None
    when the server keeps no statistics or served nothing in between. The delta spans
    the warm-up too (the server can't tell warm-up from measurement): averages, not
    counts, are what to read from it.
    """
    if before is None or after is None:
        return None
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    n = d.get("success_count", 0)
    if n <= 0:
        return None

    def per_request_us(*names: str) -> float:
        return round(sum(d.get(f"{x}_ns", 0) for x in names) / n / 1000, 1)

    executions = d.get("execution_count", 0)
    return {
        "requests": n,
        "failed": d.get("fail_count", 0),
        "queue_us": per_request_us("queue"),
        "compute_us": per_request_us("compute_input", "compute_infer", "compute_output"),
        "compute_infer_us": per_request_us("compute_infer"),
        "mean_batch": round(d.get("inference_count", 0) / executions, 2) if executions else None,
    }
