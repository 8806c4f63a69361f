"""The KServe v2 / Triton ``inference.GRPCInferenceService`` over grpc.aio.

ModelInfer and ModelStreamInfer receive and return raw bytes (the generic handler does
no protobuf parsing): the Cython codec decodes and encodes them. The other RPCs are
rare and use the generated protobuf classes. Errors reach the wire in one place,
``_abort_for``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Awaitable, Callable

import grpc
from google.protobuf.message import DecodeError

from tensorgate import __version__
from tensorgate._ext.codec import (
    WireError,
    decode_infer_request,
    encode_infer_response,
    encode_stream_response,
)
from tensorgate._proto.inference import grpc_service_pb2 as pb
from tensorgate.context import RequestContext
from tensorgate.dataplane import DataPlane
from tensorgate.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TensorGateError,
    Unavailable,
    status_of,
    wire_message,
)
from tensorgate.repository.manager import ModelRepository
from tensorgate.observability import tracing as _tracing
from tensorgate.observability.live_settings import LogSettings, TraceSettings
from tensorgate.observability.tracing import Tracing
from tensorgate.runtime.model import READY
from tensorgate.security import ADMIN, INFER, Guard, audit

log = logging.getLogger("tensorgate.grpc")

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "tensorgate"
EXTENSIONS = [
    "classification", "model_repository", "model_configuration", "schedule_policy",
    "statistics", "system_shared_memory", "cuda_shared_memory", "binary_tensor_data",
    "trace", "logging",
]


# gRPC's codes by number (errors.Status carries the number; the table is in errors.py).
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, rpc: str):
    await context.abort(GRPC_CODES[status_of(exc).grpc], wire_message(exc, log, rpc))


def deadline_of(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return 0.0 if remaining is None else time.monotonic() + remaining


# The native front end relays non-ModelInfer calls to grpc.aio over a private Unix
# socket and names the caller in this header (grpc++ drops any copy a caller sends).
PEER_HEADER = "x-tensorgate-peer"


def caller_peer(context) -> str:
    """The caller's address: the relay's header for calls from the native front end's
    private socket, else the transport's own."""
    peer = context.peer()
    if peer.startswith("unix:"):
        for key, value in context.invocation_metadata() or ():
            if key == PEER_HEADER:
                return value
    return peer


def request_context(context, deadline: float | None = None) -> RequestContext:
    """The neutral view of a gRPC call (grpc.aio's context or the native front end's
    call): metadata and peer are read only if something needs them; a native call
    answers a single header with one lookup (``metadata_value``)."""
    return RequestContext(
        deadline_of(context) if deadline is None else deadline,
        context.invocation_metadata,
        partial(caller_peer, context),
        getattr(context, "metadata_value", None),
    )


class InferenceService:
    """Handlers for every RPC of GRPCInferenceService."""

    def __init__(
        self, repository: ModelRepository, dataplane: DataPlane, state, guard: Guard | None = None,
        log_settings: LogSettings | None = None, trace_settings: TraceSettings | None = None,
    ) -> None:
        self.repository = repository
        self.dataplane = dataplane
        self.state = state  # the app: .live, .ready
        self.guard = guard  # None when auth, rate limits and the in-flight cap are all off
        self.log_settings = log_settings or LogSettings("text")
        self.trace_settings = trace_settings or TraceSettings()
        # Why RepositoryModelLoad/Unload are refused (--model-control-mode none or poll),
        # or None when they are served.
        self.model_control_refusal: str | None = None

    # -- hot path ------------------------------------------------------------------

    def _accept(self, data: bytes):
        """Decode one ModelInferRequest, if the server still takes requests."""
        if not self.state.accepting:
            raise Unavailable("the server is shutting down")
        try:
            return decode_infer_request(data)
        except WireError as exc:
            raise InvalidArgument(f"malformed ModelInferRequest: {exc}") from None

    async def model_infer(self, data: bytes, context) -> bytes:
        guard = self.guard
        ctx = request_context(context)
        tracing = _tracing.ACTIVE  # None: tracing off, nothing else is paid for it
        span = None if tracing is None else tracing.request_span("ModelInfer", ctx)
        try:
            if guard is None:
                result = await self.dataplane.infer(self._accept(data), ctx, span)
            else:
                # Checked inline: a grpc.aio interceptor would cost a coroutine per call.
                ctx.principal = guard.check(ctx, INFER, "ModelInfer")
                guard.enter()
                try:
                    result = await self.dataplane.infer(self._accept(data), ctx, span)
                finally:
                    guard.leave()
            body = encode_infer_response(*result)
        except asyncio.CancelledError as exc:
            if span is not None:
                Tracing.fail(span, exc)
            raise
        except Exception as exc:
            if span is not None:
                Tracing.fail(span, exc)
            await _abort_for(exc, context, "ModelInfer")
        if span is not None:
            Tracing.finish(span)
        return body

    async def model_stream_infer(self, requests, context):
        """Bidirectional stream: requests run concurrently; each gets one response or an
        error_message; a bad message never ends the stream."""
        stream = request_context(context)  # one per stream: its messages share it
        if self.guard is not None:
            try:  # credentials once per stream; rate and in-flight per message
                stream.principal = self.guard.authorize(stream, INFER, "ModelStreamInfer")
            except TensorGateError as exc:
                await _abort_for(exc, context, "ModelStreamInfer")
        out: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()
        tracing = _tracing.ACTIVE
        incoming = None if tracing is None else tracing.incoming(stream)  # once per stream

        async def one(data: bytes) -> None:
            await out.put(await self.stream_message(data, stream, incoming))

        async def read() -> None:
            try:
                async for data in requests:
                    task = asyncio.create_task(one(data))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.gather(*list(running), return_exceptions=True)
            finally:
                await out.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    break
                yield item
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    async def stream_message(self, data: bytes, stream: RequestContext, incoming) -> bytes:
        """One ModelStreamInfer message of a stream whose credentials passed (its
        context carries the principal): its encoded ModelStreamInferResponse, with
        error_message on failure. Raises only CancelledError. Both gRPC front ends
        serve streams through this."""
        guard = self.guard
        tracing = _tracing.ACTIVE
        entered = False
        span = None if tracing is None else tracing.start("ModelStreamInfer", incoming)
        try:
            if guard is not None:
                guard.check_rate(stream, stream.principal)
                guard.enter()
                entered = True
            result = await self.dataplane.infer(self._accept(data), stream, span)
            response = encode_stream_response(encode_infer_response(*result))
        except asyncio.CancelledError as exc:
            if span is not None:
                Tracing.fail(span, exc)
            raise
        except Exception as exc:
            if span is not None:
                Tracing.fail(span, exc)
            return encode_stream_response(None, wire_message(exc, log, "ModelStreamInfer"))
        finally:
            if entered:
                guard.leave()
        if span is not None:
            Tracing.finish(span)
        return response

    # -- server and model state ----------------------------------------------------

    def _resolve(self, name: str, version: str):
        """A model version for the metadata RPCs; a route name (without a version)
        answers for its heaviest target, so clients that read metadata first work."""
        routes = self.dataplane.routes
        if routes is not None and not version:
            primary = routes.primary(name)
            if primary is not None:
                return self.repository.resolve(*primary)
        return self.repository.resolve(name, version)

    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=self.state.live)

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=self.state.ready)

    async def server_metadata(self, request, context):
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    async def model_ready(self, request, context):
        # A readiness probe gets an answer, not an error: unknown models are not ready.
        try:
            model = self._resolve(request.name, request.version)
        except (NotFound, Unavailable):
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=model.state == READY)

    async def model_metadata(self, request, context):
        model = self._resolve(request.name, request.version)
        versions = (
            [model.version_str]
            if request.version or model.name != request.name
            else [m.version_str for m in self.repository.versions_of(request.name)]
        )
        batch = [-1] if model.max_batch_size > 0 else []
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=versions,
            platform=model.config.platform,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.dtype.wire, shape=batch + list(s.dims)
                )
                for s in model.inputs.values()
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.dtype.wire, shape=batch + list(s.dims)
                )
                for s in model.outputs.values()
            ],
        )

    async def model_config(self, request, context):
        model = self._resolve(request.name, request.version)
        return pb.ModelConfigResponse(config=model.config)

    async def model_statistics(self, request, context):
        if request.name:
            models = (
                [self.repository.resolve(request.name, request.version)]
                if request.version
                else self.repository.versions_of(request.name)
            )
            if not models:
                self.repository.resolve(request.name, "")  # raises the precise error
        else:
            models = self.repository.models()
        return pb.ModelStatisticsResponse(model_stats=[_statistics(m) for m in models])

    async def repository_index(self, request, context):
        self._check_repository_name(request.repository_name)
        rows = self.repository.index()
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=name, version=version, state=state, reason=reason
                )
                for name, version, state, reason in rows
                if not request.ready or state == READY
            ]
        )

    def _check_model_control(self) -> None:
        if self.model_control_refusal is not None:
            raise FailedPrecondition(self.model_control_refusal)

    async def repository_model_load(self, request, context):
        self._check_repository_name(request.repository_name)
        self._check_model_control()
        if request.parameters:
            keys = ", ".join(sorted(request.parameters))
            raise InvalidArgument(f"RepositoryModelLoad: parameters are not supported yet ({keys})")
        await self.repository.load(request.model_name)  # raises with every failure's reason
        log.info("model %s loaded on request", request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request, context):
        self._check_repository_name(request.repository_name)
        self._check_model_control()
        await self.repository.unload(request.model_name)
        log.info("model %s unloaded on request", request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- system shared memory (the registry is the data plane's) ----------------------

    async def system_shm_status(self, request, context):
        return _region_statuses(pb.SystemSharedMemoryStatusResponse(),
                                self.dataplane.shared_memory.status(request.name))

    async def system_shm_register(self, request, context):
        self.dataplane.shared_memory.register(
            request.name, request.key, request.offset, request.byte_size
        )
        return pb.SystemSharedMemoryRegisterResponse()

    async def system_shm_unregister(self, request, context):
        self.dataplane.shared_memory.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- CUDA shared memory ------------------------------------------------------------

    async def cuda_shm_status(self, request, context):
        return _region_statuses(pb.CudaSharedMemoryStatusResponse(),
                                self.dataplane.cuda_shared_memory.status(request.name))

    async def cuda_shm_register(self, request, context):
        self.dataplane.cuda_shared_memory.register(
            request.name, request.raw_handle, request.device_id, request.byte_size
        )
        return pb.CudaSharedMemoryRegisterResponse()

    async def cuda_shm_unregister(self, request, context):
        self.dataplane.cuda_shared_memory.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    # -- settings that change while serving (reading needs infer, changing admin) ----

    async def log_settings_rpc(self, request, context):
        changes = {}
        for key, value in request.settings.items():
            which = value.WhichOneof("parameter_choice")
            if which is None:
                raise InvalidArgument(f"log setting '{key}': no value given")
            changes[key] = getattr(value, which)
        current = (
            self.change_settings(request_context(context), "LogSettings",
                                 lambda: self.log_settings.update(changes))
            if changes else self.log_settings.current()
        )
        reply = pb.LogSettingsResponse()
        for key, value in current.items():
            field = {bool: "bool_param", int: "uint32_param", str: "string_param"}[type(value)]
            setattr(reply.settings[key], field, value)
        return reply

    async def trace_setting_rpc(self, request, context):
        changes = {key: list(value.value) for key, value in request.settings.items()}
        settings = self.trace_settings
        if changes:
            current = self.change_settings(
                request_context(context), "TraceSetting",
                lambda: settings.update(changes, request.model_name),
            )
        elif request.model_name:
            current = settings.update({}, request.model_name)  # refused by name
        else:
            current = settings.current()
        reply = pb.TraceSettingResponse()
        for key, values in current.items():
            reply.settings[key].value.extend(values)
        return reply

    def change_settings(self, ctx: RequestContext, rpc: str, apply: Callable[[], dict]) -> dict:
        """Apply a settings change (gRPC and HTTP alike): it needs the admin role, and
        leaves one audit line with its outcome."""
        if self.guard is not None:
            ctx.principal = self.guard.check(ctx, ADMIN, rpc)  # denied ones: audited there
        who = ctx.principal.token_id if ctx.principal is not None else "-"
        outcome = "ok"
        try:
            return apply()
        except Exception as exc:
            outcome = status_of(exc).name
            raise
        finally:
            audit.admin_action(rpc, ctx.peer, who, "-", outcome)

    @staticmethod
    def _check_repository_name(name: str) -> None:
        if name:
            raise NotFound(f"unknown repository '{name}': this server has one, unnamed")


def _duration(target, d) -> None:
    target.count, target.ns = d.count, d.ns


def _statistics(model) -> pb.ModelStatistics:
    s = model.stats
    out = pb.ModelStatistics(
        name=model.name,
        version=model.version_str,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
    )
    inf = out.inference_stats
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                  "cache_hit", "cache_miss"):
        _duration(getattr(inf, field), getattr(s, field))
    for size, per in sorted(s.batches.items()):
        b = out.batch_stats.add(batch_size=size)
        _duration(b.compute_input, per.compute_input)
        _duration(b.compute_infer, per.compute_infer)
        _duration(b.compute_output, per.compute_output)
    return out


def _region_statuses(reply, regions: list[dict]):
    """A shared-memory status reply (system or CUDA) with a ``regions`` entry per
    region's status fields, keyed by name."""
    for region in regions:
        status = reply.regions[region["name"]]
        for key, value in region.items():
            setattr(status, key, value)
    return reply


class MalformedRequest:
    """What a ``lenient`` deserializer hands the handler for bytes that do not parse."""

    __slots__ = ("error",)

    def __init__(self, error: InvalidArgument) -> None:
        self.error = error


def lenient(req_cls) -> Callable[[bytes], object]:
    """A request deserializer that does not raise. grpc.aio answers a deserializer's
    exception with UNKNOWN ("Unexpected <class 'DecodeError'>: ...") and logs a
    traceback (found by bench/fuzz_scale.py: truncated or bit-flipped control-plane
    messages); the handler raises the INVALID_ARGUMENT that README's Errors table
    promises for a malformed message instead, after the caller's role is checked."""
    kind = req_cls.DESCRIPTOR.name

    def parse(data: bytes):
        try:
            return req_cls.FromString(data)
        except DecodeError as exc:
            return MalformedRequest(InvalidArgument(f"malformed {kind}: {exc}"))

    return parse


def _guarded(
    rpc: str, fn: Callable[..., Awaitable], guard: Guard | None, role: str
) -> Callable[..., Awaitable]:
    if role == ADMIN:
        return admin_handler(rpc, fn, guard)

    async def handler(request, context):
        try:
            if guard is not None:
                guard.check(request_context(context), role, rpc)
            if isinstance(request, MalformedRequest):
                raise request.error
            return await fn(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, rpc)

    return handler


def _model_name(request) -> str:
    return request.model_name


def admin_handler(
    rpc: str,
    fn: Callable[..., Awaitable],
    guard: Guard | None,
    subject: Callable[[object], str] = _model_name,
    audited: bool = True,
):
    """Admin RPCs (this service's and the control plane's): checked for the admin role;
    with ``audited``, every attempt that passed the check leaves one audit line with its
    outcome and ``subject(request)`` (denied ones are logged by the guard)."""

    async def handler(request, context):
        ctx = request_context(context)
        try:
            principal = guard.check(ctx, ADMIN, rpc) if guard is not None else None
        except TensorGateError as exc:
            await _abort_for(exc, context, rpc)
        who = principal.token_id if principal is not None else "-"
        outcome = "ok"
        try:
            if isinstance(request, MalformedRequest):
                raise request.error
            return await fn(request, context)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as exc:
            outcome = status_of(exc).name
            await _abort_for(exc, context, rpc)
        finally:
            if audited:
                what = "-" if isinstance(request, MalformedRequest) else subject(request)
                audit.admin_action(rpc, ctx.peer, who, what, outcome)

    return handler


def generic_handler(service: InferenceService) -> grpc.GenericRpcHandler:
    s = service
    unary = grpc.unary_unary_rpc_method_handler

    def typed(rpc: str, fn, req_cls, role: str = INFER):
        return unary(
            _guarded(rpc, fn, s.guard, role),
            request_deserializer=lenient(req_cls),
            response_serializer=lambda m: m.SerializeToString(),
        )

    handlers = {
        # Raw bytes in and out: the Cython codec parses and writes the wire format.
        "ModelInfer": unary(s.model_infer),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(s.model_stream_infer),
        "ServerLive": typed("ServerLive", s.server_live, pb.ServerLiveRequest),
        "ServerReady": typed("ServerReady", s.server_ready, pb.ServerReadyRequest),
        "ServerMetadata": typed("ServerMetadata", s.server_metadata, pb.ServerMetadataRequest),
        "ModelReady": typed("ModelReady", s.model_ready, pb.ModelReadyRequest),
        "ModelMetadata": typed("ModelMetadata", s.model_metadata, pb.ModelMetadataRequest),
        "ModelConfig": typed("ModelConfig", s.model_config, pb.ModelConfigRequest),
        "ModelStatistics": typed("ModelStatistics", s.model_statistics, pb.ModelStatisticsRequest),
        "RepositoryIndex": typed("RepositoryIndex", s.repository_index, pb.RepositoryIndexRequest),
        "LogSettings": typed("LogSettings", s.log_settings_rpc, pb.LogSettingsRequest),
        "TraceSetting": typed("TraceSetting", s.trace_setting_rpc, pb.TraceSettingRequest),
        "SystemSharedMemoryStatus": typed(
            "SystemSharedMemoryStatus", s.system_shm_status, pb.SystemSharedMemoryStatusRequest
        ),
        "SystemSharedMemoryRegister": typed(
            "SystemSharedMemoryRegister", s.system_shm_register,
            pb.SystemSharedMemoryRegisterRequest,
        ),
        "SystemSharedMemoryUnregister": typed(
            "SystemSharedMemoryUnregister", s.system_shm_unregister,
            pb.SystemSharedMemoryUnregisterRequest,
        ),
        "CudaSharedMemoryStatus": typed(
            "CudaSharedMemoryStatus", s.cuda_shm_status, pb.CudaSharedMemoryStatusRequest
        ),
        "CudaSharedMemoryRegister": typed(
            "CudaSharedMemoryRegister", s.cuda_shm_register, pb.CudaSharedMemoryRegisterRequest
        ),
        "CudaSharedMemoryUnregister": typed(
            "CudaSharedMemoryUnregister", s.cuda_shm_unregister,
            pb.CudaSharedMemoryUnregisterRequest,
        ),
        "RepositoryModelLoad": typed(
            "RepositoryModelLoad", s.repository_model_load, pb.RepositoryModelLoadRequest, ADMIN
        ),
        "RepositoryModelUnload": typed(
            "RepositoryModelUnload", s.repository_model_unload, pb.RepositoryModelUnloadRequest,
            ADMIN,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
