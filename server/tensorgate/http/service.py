"""The KServe v2 REST endpoints, as Triton's HTTP server serves them.

``HttpService.handle`` takes one parsed HTTP request (method, path, headers, body,
peer) and returns (status, headers, body); the connection layer (http/server.py) owns
sockets and HTTP/1.1 framing. Every endpoint runs the same code as its gRPC RPC: the
inference path is ``DataPlane.infer``, the others are the gRPC service's handlers,
whose protobuf answers are written as Triton's JSON. Errors answer the HTTP status of
errors.py's table with ``{"error": "<message>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
from typing import Awaitable, Callable
from urllib.parse import unquote

import orjson
from google.protobuf.descriptor import FieldDescriptor

from tensorgate._proto.inference import grpc_service_pb2 as pb
from tensorgate.context import RequestContext
from tensorgate.errors import (
    InvalidArgument,
    Unavailable,
    status_of,
    wire_message,
)
from tensorgate.http.v2 import HEADER_LENGTH, decode_infer, encode_infer
from tensorgate.observability import tracing as _tracing
from tensorgate.observability.tracing import Tracing
from tensorgate.security import ADMIN, INFER, audit

log = logging.getLogger("tensorgate.http")

JSON = (b"content-type", b"application/json")
Response = tuple[int, list, bytes]

_MODEL = r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?"
_ROUTES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"/v2/health/(?P<kind>live|ready)"), "health"),
    (re.compile(r"/v2"), "server_metadata"),
    (re.compile(r"/v2/models/stats"), "stats_all"),
    (re.compile(_MODEL + r"/infer"), "infer"),
    (re.compile(_MODEL + r"/ready"), "model_ready"),
    (re.compile(_MODEL + r"/config"), "model_config"),
    (re.compile(_MODEL + r"/stats"), "model_stats"),
    (re.compile(_MODEL + r"/trace/setting"), "trace_setting"),
    (re.compile(_MODEL), "model_metadata"),
    (re.compile(r"/v2/repository/index"), "repository_index"),
    (re.compile(r"/v2/repository/models/(?P<model>[^/]+)/(?P<action>load|unload)"),
     "repository_control"),
    (re.compile(r"/v2/trace/setting"), "trace_setting"),
    (re.compile(r"/v2/logging"), "log_settings"),
    (re.compile(r"/v2/systemsharedmemory(?:/region/(?P<region>[^/]+))?/(?P<action>status|"
                r"register|unregister)"), "shared_memory"),
    (re.compile(r"/v2/cudasharedmemory(?:/region/(?P<region>[^/]+))?/(?P<action>status|"
                r"register|unregister)"), "cuda_shared_memory"),
]
# The methods each endpoint answers (others: 405), as Triton's.
_METHODS = {
    "health": ("GET", "HEAD"), "server_metadata": ("GET",), "stats_all": ("GET",),
    "infer": ("POST",), "model_ready": ("GET", "HEAD"), "model_config": ("GET",),
    "model_stats": ("GET",), "model_metadata": ("GET",), "repository_index": ("POST",),
    "repository_control": ("POST",), "trace_setting": ("GET", "POST"),
    "log_settings": ("GET", "POST"), "shared_memory": ("GET", "POST"),
    "cuda_shared_memory": ("GET", "POST"),
}


def proto_json(message) -> dict:
    """A protobuf message as Triton's HTTP JSON: proto field names, 64-bit integers as
    numbers (proto3's JSON mapping would write them as strings), enums by name,
    unset message fields left out, scalars always present."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {
                k: (proto_json(v) if value_field.message_type is not None else v)
                for k, v in value.items()
            }
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            out[field.name] = [_json_value(field, v) for v in value]
        elif field.message_type is not None:
            if message.HasField(field.name):
                out[field.name] = proto_json(value)
        elif field.containing_oneof is not None and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _json_value(field, value)
    return out


def _json_value(field, value):
    if field.message_type is not None:
        return proto_json(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("latin-1")
    return value


def _json(status: int, doc) -> Response:
    return status, [JSON], orjson.dumps(doc)


def error_response(exc: BaseException, where: str) -> Response:
    return _json(status_of(exc).http, {"error": wire_message(exc, log, where)})


def _body_json(body: bytes, what: str) -> dict:
    if not body:
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"{what}: the body is not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: the body must be a JSON object")
    return doc


class HttpService:
    """Every v2 REST endpoint over the gRPC service's handlers and the data plane."""

    def __init__(self, service) -> None:
        self.service = service  # grpc.inference.InferenceService: the RPCs' handlers
        self.dataplane = service.dataplane
        self.state = service.state
        self.guard = service.guard

    async def handle(
        self, method: str, path: str, headers: list, body: bytes, peer: str
    ) -> Response:
        """Answer one request. ``headers``: (lowercase name, value) pairs as text."""
        for pattern, endpoint in _ROUTES:
            match = pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return _json(404, {"error": f"Not Found: {path}"})
        if method not in _METHODS[endpoint]:
            return _json(405, {"error": f"Method Not Allowed: {method} {path}"})
        params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        ctx = RequestContext(0.0, headers, peer)
        handler: Callable[..., Awaitable[Response]] = getattr(self, "_" + endpoint)
        try:
            return await handler(ctx, method, body, **params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return error_response(exc, endpoint)

    def _check(self, ctx: RequestContext, role: str, rpc: str) -> None:
        if self.guard is not None:
            ctx.principal = self.guard.check(ctx, role, rpc)

    # -- inference -------------------------------------------------------------------

    async def _infer(self, ctx, method, body, model, version="") -> Response:
        if not self.state.accepting:
            raise Unavailable("the server is shutting down")
        guard = self.guard
        tracing = _tracing.ACTIVE
        span = None if tracing is None else tracing.request_span("HTTP ModelInfer", ctx)
        entered = False
        try:
            if guard is not None:
                ctx.principal = guard.check(ctx, INFER, "ModelInfer")
                guard.enter()
                entered = True
            try:
                header_length = ctx.header(HEADER_LENGTH)
                if header_length is not None:
                    try:
                        header_length = int(header_length)
                    except ValueError:
                        raise InvalidArgument(
                            f"Inference-Header-Content-Length: not a number "
                            f"({header_length!r})"
                        ) from None
                request = decode_infer(body, header_length, model, version)
                result = await self.dataplane.infer(request, ctx, span)
            finally:
                if entered:
                    guard.leave()
            out, json_length = encode_infer(result, request)
        except asyncio.CancelledError as exc:
            if span is not None:
                Tracing.fail(span, exc)
            raise
        except Exception as exc:
            if span is not None:
                Tracing.fail(span, exc)
            return error_response(exc, "ModelInfer")
        if span is not None:
            Tracing.finish(span)
        if json_length is None:
            return 200, [JSON], out
        return 200, [(b"content-type", b"application/octet-stream"),
                     (b"inference-header-content-length", str(json_length).encode())], out

    # -- health and metadata -----------------------------------------------------------

    async def _health(self, ctx, method, body, kind) -> Response:
        ok = self.state.live if kind == "live" else self.state.ready
        return (200 if ok else 400), [], b""

    async def _server_metadata(self, ctx, method, body) -> Response:
        self._check(ctx, INFER, "ServerMetadata")
        reply = await self.service.server_metadata(pb.ServerMetadataRequest(), None)
        return _json(200, proto_json(reply))

    async def _model_ready(self, ctx, method, body, model, version="") -> Response:
        self._check(ctx, INFER, "ModelReady")
        reply = await self.service.model_ready(
            pb.ModelReadyRequest(name=model, version=version), None
        )
        return (200 if reply.ready else 400), [], b""

    async def _model_metadata(self, ctx, method, body, model, version="") -> Response:
        self._check(ctx, INFER, "ModelMetadata")
        reply = await self.service.model_metadata(
            pb.ModelMetadataRequest(name=model, version=version), None
        )
        return _json(200, proto_json(reply))

    async def _model_config(self, ctx, method, body, model, version="") -> Response:
        self._check(ctx, INFER, "ModelConfig")
        reply = await self.service.model_config(
            pb.ModelConfigRequest(name=model, version=version), None
        )
        return _json(200, proto_json(reply.config))

    async def _stats_all(self, ctx, method, body) -> Response:
        return await self._model_stats(ctx, method, body, "")

    async def _model_stats(self, ctx, method, body, model, version="") -> Response:
        self._check(ctx, INFER, "ModelStatistics")
        reply = await self.service.model_statistics(
            pb.ModelStatisticsRequest(name=model, version=version), None
        )
        return _json(200, proto_json(reply))

    # -- repository ---------------------------------------------------------------------

    async def _repository_index(self, ctx, method, body) -> Response:
        self._check(ctx, INFER, "RepositoryIndex")
        doc = _body_json(body, "RepositoryIndex")
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("RepositoryIndex: 'ready' must be a boolean")
        reply = await self.service.repository_index(pb.RepositoryIndexRequest(ready=ready), None)
        return _json(200, [proto_json(m) for m in reply.models])

    async def _repository_control(self, ctx, method, body, model, action) -> Response:
        rpc = "RepositoryModelLoad" if action == "load" else "RepositoryModelUnload"
        who = "-"
        outcome = "ok"
        if self.guard is not None:
            ctx.principal = self.guard.check(ctx, ADMIN, rpc)  # denied ones: audited there
            who = ctx.principal.token_id if ctx.principal is not None else "-"
        try:
            doc = _body_json(body, rpc)
            parameters = doc.get("parameters") or {}
            if not isinstance(parameters, dict):
                raise InvalidArgument(f"{rpc}: 'parameters' must be a JSON object")
            if action == "load":
                if parameters:
                    keys = ", ".join(sorted(parameters))
                    raise InvalidArgument(
                        f"RepositoryModelLoad: parameters are not supported yet ({keys})"
                    )
                await self.service.repository_model_load(
                    pb.RepositoryModelLoadRequest(model_name=model), None
                )
            else:
                await self.service.repository_model_unload(
                    pb.RepositoryModelUnloadRequest(model_name=model), None
                )
        except Exception as exc:
            outcome = status_of(exc).name
            raise
        finally:
            audit.admin_action(rpc, ctx.peer, who, model, outcome)
        return 200, [], b""

    # -- settings that change while serving -----------------------------------------

    async def _log_settings(self, ctx, method, body) -> Response:
        settings = self.service.log_settings
        if method == "GET":
            self._check(ctx, INFER, "LogSettings")
            return _json(200, settings.current())
        changes = _body_json(body, "LogSettings")
        return _json(200, self.service.change_settings(
            ctx, "LogSettings", lambda: settings.update(changes)
        ))

    async def _trace_setting(self, ctx, method, body, model="", version="") -> Response:
        settings = self.service.trace_settings
        if version:
            raise InvalidArgument("trace settings are per server, not per model version")
        if method == "GET":
            self._check(ctx, INFER, "TraceSetting")
            current = settings.current() if not model else settings.update({}, model)
        else:
            changes = {}
            for key, value in _body_json(body, "TraceSetting").items():
                if value is None:
                    changes[key] = []  # reset to the start value
                elif isinstance(value, str):
                    changes[key] = [value]
                elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                    changes[key] = value
                else:
                    raise InvalidArgument(
                        f"trace setting '{key}': a string, a list of strings or null"
                    )
            current = self.service.change_settings(
                ctx, "TraceSetting", lambda: settings.update(changes, model)
            )
        # Triton's HTTP form: trace_level a list, every other setting one string.
        return _json(200, {k: (v if k == "trace_level" else v[0]) for k, v in current.items()})

    # -- system shared memory -----------------------------------------------------------

    async def _shared_memory(self, ctx, method, body, action, region="") -> Response:
        shm = self.dataplane.shared_memory
        if action == "status":
            if method != "GET":
                return _json(405, {"error": f"Method Not Allowed: {method} (status is GET)"})
            self._check(ctx, INFER, "SystemSharedMemoryStatus")
            return _json(200, shm.status(region))
        if method != "POST":
            return _json(405, {"error": f"Method Not Allowed: {method} ({action} is POST)"})
        if action == "unregister":
            self._check(ctx, INFER, "SystemSharedMemoryUnregister")
            shm.unregister(region)
            return 200, [], b""
        self._check(ctx, INFER, "SystemSharedMemoryRegister")
        if not region:
            raise InvalidArgument("register: name the region in the path "
                                  "(/v2/systemsharedmemory/region/NAME/register)")
        doc = _body_json(body, "SystemSharedMemoryRegister")
        key = doc.get("key")
        if not isinstance(key, str):
            raise InvalidArgument("SystemSharedMemoryRegister: 'key' (a string) is required")
        shm.register(region, key, doc.get("offset", 0), doc.get("byte_size"))
        return 200, [], b""

    async def _cuda_shared_memory(self, ctx, method, body, action, region="") -> Response:
        shm = self.dataplane.cuda_shared_memory
        if action == "status":
            if method != "GET":
                return _json(405, {"error": f"Method Not Allowed: {method} (status is GET)"})
            self._check(ctx, INFER, "CudaSharedMemoryStatus")
            return _json(200, shm.status(region))
        if method != "POST":
            return _json(405, {"error": f"Method Not Allowed: {method} ({action} is POST)"})
        if action == "unregister":
            self._check(ctx, INFER, "CudaSharedMemoryUnregister")
            shm.unregister(region)
            return 200, [], b""
        self._check(ctx, INFER, "CudaSharedMemoryRegister")
        if not region:
            raise InvalidArgument(
                "'region name' is necessary to register cuda shared memory region "
                "(/v2/cudasharedmemory/region/NAME/register)"
            )
        doc = _body_json(body, "CudaSharedMemoryRegister")
        handle = doc.get("raw_handle")
        if not isinstance(handle, dict):
            raise InvalidArgument("Shared memory register request has no 'raw_handle' field")
        try:
            raw = base64.b64decode(handle.get("b64"), validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise InvalidArgument(
                "'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t "
                "({\"b64\": \"...\"})"
            ) from None
        shm.register(region, raw, doc.get("device_id"), doc.get("byte_size"))
        return 200, [], b""

