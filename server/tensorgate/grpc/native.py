"""The native front end's event-loop side: ModelInfer calls from grpc++ to the handler.

grpc++ (ext/native/frontend.cpp) owns the public port. It reads each ModelInfer call in
C++ and queues it; one eventfd wake-up of the loop drains every call queued meanwhile,
and each runs the same ``InferenceService.model_infer`` the grpc.aio front end runs, with
the ``NativeCall`` as its context. Every other RPC is relayed by grpc++ to the grpc.aio
server, which then listens on a private Unix socket only (``backend_address``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from functools import partial

import grpc

from tensorgate.errors import TensorGateError
from tensorgate.grpc.inference import SERVICE, InferenceService, request_context
from tensorgate.observability import tracing as _tracing
from tensorgate.security import INFER

try:
    from tensorgate._ext.frontend import NativeAbort, NativeFrontend
except ImportError:  # built without grpc++ (setup.py warns)
    NativeFrontend = None  # type: ignore[assignment,misc]

log = logging.getLogger("tensorgate.grpc")

INFER_METHOD = f"/{SERVICE}/ModelInfer"
STREAM_METHOD = f"/{SERVICE}/ModelStreamInfer"

# ModelInfer calls that may wait for the event loop before grpc++ answers new ones
# RESOURCE_EXHAUSTED itself (grpc core's own pending-call limit has the same default).
DEFAULT_MAX_WAITING = 3000

_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_CANCELLED_MESSAGE = "ModelInfer: cancelled"
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]


def available() -> bool:
    return NativeFrontend is not None


def backend_address() -> tuple[str, str]:
    """(grpc address, private directory) for the grpc.aio server behind the front end."""
    directory = tempfile.mkdtemp(prefix="tensorgate-")  # mode 0700: ours alone
    return f"unix:{os.path.join(directory, 'grpc.sock')}", directory


def open_frontend(address: str, backend: str, settings, tls) -> "NativeFrontend":
    """grpc++ listening on ``address`` (raises RuntimeError when it cannot)."""
    message_bytes = settings.max_message_mb * 1024 * 1024
    return NativeFrontend(
        address, backend, INFER_METHOD, STREAM_METHOD,
        max_receive_bytes=message_bytes,
        max_send_bytes=message_bytes,
        max_waiting=settings.max_pending_calls or DEFAULT_MAX_WAITING,
        cert_chain=tls.chain if tls is not None else None,
        private_key=tls.key if tls is not None else None,
        client_ca=tls.client_ca if tls is not None else None,
    )


class NativeInferDispatcher:
    """Runs the ModelInfer calls and ModelStreamInfer messages the front end hands over;
    answers each exactly once."""

    def __init__(self, frontend, service: InferenceService) -> None:
        self.frontend = frontend
        self.service = service
        self._running: dict[int, tuple[asyncio.Task, object]] = {}  # id -> (task, call)
        self._streams: dict[int, set[asyncio.Task]] = {}  # stream id -> its messages' tasks
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.frontend.fileno(), self._drain)

    def stop_watching(self) -> None:
        """After the front end's shutdown returned: grpc++ has ended every call by then,
        so nothing is left to drain."""
        if self._loop is not None:
            self._loop.remove_reader(self.frontend.fileno())

    def _drain(self) -> None:
        calls, messages, cancelled = self.frontend.drain()
        create_task = self._loop.create_task
        serve = self._serve
        running = self._running
        for call in calls:
            running[call.id] = (create_task(serve(call)), call)
        for message in messages:
            tasks = self._streams.setdefault(message.id, set())
            task = create_task(self._serve_message(message))
            tasks.add(task)
            # Also answers a message whose task was cancelled before it ran.
            task.add_done_callback(partial(self._message_done, message, tasks))
        for call_id in cancelled:  # the caller went away: its requests leave the queue
            entry = running.get(call_id)
            if entry is not None:
                task, call = entry
                task.cancel()
                # A task cancelled before its first step never runs _serve's body (the
                # CancelledError is thrown in ahead of its try): answer it here too.
                task.add_done_callback(partial(self._answer_cancelled, call))
            for task in self._streams.get(call_id, ()):
                task.cancel()

    def _answer_cancelled(self, call, task) -> None:
        self._running.pop(call.id, None)
        call.fail(_CANCELLED, _CANCELLED_MESSAGE)  # ignored if _serve answered

    def _message_done(self, message, tasks: set, task: asyncio.Task) -> None:
        tasks.discard(task)
        if not tasks and self._streams.get(message.id) is tasks:
            del self._streams[message.id]
        message.skip()  # ignored when it was answered

    async def _serve_message(self, message) -> None:
        service = self.service
        ctx = request_context(message)
        if service.guard is not None:
            try:  # per message here: each comes on its own, with the stream's metadata
                ctx.principal = service.guard.authorize(ctx, INFER, "ModelStreamInfer")
            except TensorGateError as exc:
                message.fail(exc.status.grpc, exc.message)  # ends the stream
                return
        tracing = _tracing.ACTIVE
        incoming = None if tracing is None else tracing.incoming(ctx)
        message.answer(await service.stream_message(message.data, ctx, incoming))

    async def _serve(self, call) -> None:
        try:
            body = await self.service.model_infer(call.data, call)
        except NativeAbort as exc:
            call.fail(exc.code, exc.details)
        except asyncio.CancelledError:
            call.fail(_CANCELLED, _CANCELLED_MESSAGE)
        except BaseException:  # model_infer maps every error itself; this is a bug
            log.exception("ModelInfer: unexpected error in the native front end")
            call.fail(_INTERNAL, "ModelInfer: internal error (see the server log)")
        else:
            call.finish(body)
        finally:
            self._running.pop(call.id, None)
