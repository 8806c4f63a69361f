"""One exception hierarchy, and the one table that maps it to every wire.

Raised anywhere below the front ends; each class carries a ``Status``: its name (as
gRPC spells it), its gRPC status code and its HTTP status. The front ends turn an
exception into a gRPC status or an HTTP answer with ``status_of`` and nothing else.
Messages of these exceptions are written for the caller and go to the wire as they
are; any other exception is logged and answered with a generic INTERNAL message.

Nothing here imports grpc: gRPC's status codes are numbers fixed by its protocol.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple


class Status(NamedTuple):
    name: str  # as gRPC names it; also the label in statistics and audit lines
    grpc: int  # the gRPC status code
    http: int  # the HTTP status, as Triton's HTTP server answers the same condition


OK = Status("OK", 0, 200)
CANCELLED = Status("CANCELLED", 1, 499)  # nginx's "client closed request"
INVALID_ARGUMENT = Status("INVALID_ARGUMENT", 3, 400)
DEADLINE_EXCEEDED = Status("DEADLINE_EXCEEDED", 4, 504)
NOT_FOUND = Status("NOT_FOUND", 5, 404)
ALREADY_EXISTS = Status("ALREADY_EXISTS", 6, 409)
PERMISSION_DENIED = Status("PERMISSION_DENIED", 7, 403)
RESOURCE_EXHAUSTED = Status("RESOURCE_EXHAUSTED", 8, 429)
FAILED_PRECONDITION = Status("FAILED_PRECONDITION", 9, 409)
UNIMPLEMENTED = Status("UNIMPLEMENTED", 12, 501)
INTERNAL = Status("INTERNAL", 13, 500)
UNAVAILABLE = Status("UNAVAILABLE", 14, 503)
UNAUTHENTICATED = Status("UNAUTHENTICATED", 16, 401)

GENERIC_INTERNAL = "internal error (see the server log)"


class TensorGateError(Exception):
    status: Status = INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(TensorGateError):
    """Unknown model, version or route."""

    status = NOT_FOUND


class AlreadyExists(TensorGateError):
    """A name that must be unique is taken (a shared-memory region)."""

    status = ALREADY_EXISTS


class InvalidArgument(TensorGateError):
    """The request is malformed or does not match the model's inputs."""

    status = INVALID_ARGUMENT


class Unavailable(TensorGateError):
    """Model loading, unloading or draining; server shutting down."""

    status = UNAVAILABLE


class ResourceExhausted(TensorGateError):
    """Queue full or over a limit."""

    status = RESOURCE_EXHAUSTED


class Unauthenticated(TensorGateError):
    """Missing or unknown credentials."""

    status = UNAUTHENTICATED


class PermissionDenied(TensorGateError):
    """Known credentials without the role the call needs."""

    status = PERMISSION_DENIED


class DeadlineExceeded(TensorGateError):
    """The deadline or queue timeout passed before the request ran."""

    status = DEADLINE_EXCEEDED


class FailedPrecondition(TensorGateError):
    """The change does not apply in the current state (e.g. a rollout is running)."""

    status = FAILED_PRECONDITION


class Unimplemented(TensorGateError):
    status = UNIMPLEMENTED


class RuntimeFailure(TensorGateError):
    """ONNX Runtime failed on a valid request; the message is the runtime's."""

    status = INTERNAL


class ModelLoadFailed(TensorGateError):
    """An explicit load request failed; the message carries every version's reason."""

    status = INTERNAL


class ModelLoadError(Exception):
    """A model version could not be loaded; the message is its reason, shown in
    RepositoryIndex and the log."""


def status_of(exc: BaseException) -> Status:
    """The status an exception reaches the wire with (cancellation: CANCELLED; anything
    unexpected: INTERNAL)."""
    if isinstance(exc, TensorGateError):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    return INTERNAL


# A gRPC caller reads the message in the grpc-message trailer, percent-encoded (a byte
# outside printable ASCII takes three), and gRPC clients refuse metadata past 8 KiB
# (grpc core's soft limit; between 8 and 16 KiB a random share is refused), so a message
# that quotes a huge caller-supplied name (a 70,000-character model name, found by
# bench/fuzz_scale.py) reached the caller as RESOURCE_EXHAUSTED "received initial
# metadata size exceeds limit" instead of its own status. Messages are cut to this many
# encoded bytes; the start, which names the condition, is kept.
WIRE_MESSAGE_MAX_BYTES = 4096


def bounded(message: str, limit: int = WIRE_MESSAGE_MAX_BYTES) -> str:
    """``message``, cut where its percent-encoded size would pass ``limit`` bytes."""
    if len(message) * 12 <= limit:  # even 4-byte characters, each byte encoded: fits
        return message
    cost, budget = 0, limit - 48  # room for the note on what was cut
    for i, ch in enumerate(message):
        code = ord(ch)
        cost += 1 if 0x20 <= code < 0x7F and ch != "%" else 3 * len(
            ch.encode("utf-8", "surrogatepass"))
        if cost > budget:
            return f"{message[:i]}... ({len(message) - i} more characters)"
    return message


def wire_message(exc: BaseException, log, where: str) -> str:
    """What the caller reads for ``exc``: its own message (cut to
    WIRE_MESSAGE_MAX_BYTES), or, for an unexpected exception, a generic one (the details
    go to ``log``, never to the wire)."""
    if isinstance(exc, TensorGateError):
        return bounded(exc.message)
    log.error("%s: unexpected error", where, exc_info=exc)
    return f"{where}: {GENERIC_INTERNAL}"
