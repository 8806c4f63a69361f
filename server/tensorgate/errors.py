"""One exception hierarchy; each class carries the gRPC status it maps to.

Raised anywhere below the servicer, turned into a status in exactly one place
(``tensorgate.grpc.status``). Messages of these exceptions are written for the caller
and go to the wire as they are; any other exception is logged and answered with a
generic INTERNAL message.
"""

from __future__ import annotations

import grpc


class TensorGateError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(TensorGateError):
    """Unknown model, version or route."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(TensorGateError):
    """The request is malformed or does not match the model's inputs."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unavailable(TensorGateError):
    """Model loading, unloading or draining; server shutting down."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(TensorGateError):
    """Queue full or over a limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(TensorGateError):
    """Missing or unknown credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TensorGateError):
    """Known credentials without the role the call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(TensorGateError):
    """The deadline or queue timeout passed before the request ran."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(TensorGateError):
    """The change does not apply in the current state (e.g. a rollout is running)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unimplemented(TensorGateError):
    code = grpc.StatusCode.UNIMPLEMENTED


class RuntimeFailure(TensorGateError):
    """ONNX Runtime failed on a valid request; the message is the runtime's."""

    code = grpc.StatusCode.INTERNAL


class ModelLoadFailed(TensorGateError):
    """An explicit load request failed; the message carries every version's reason."""

    code = grpc.StatusCode.INTERNAL


class ModelLoadError(Exception):
    """A model version could not be loaded; the message is its reason, shown in
    RepositoryIndex and the log."""
