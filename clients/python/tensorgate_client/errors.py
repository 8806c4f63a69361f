"""The one exception a failed call raises: ``TensorGateError``."""

from __future__ import annotations

import grpc


class TensorGateError(Exception):
    """A call failed.

    ``code`` is the gRPC status (a ``grpc.StatusCode``) and ``message`` the server's
    message, unchanged. Failures the client detects itself use the code gRPC would have
    used: UNAVAILABLE when no connection came up in time (nothing was sent),
    DEADLINE_EXCEEDED when the deadline passed before the request could be sent,
    INTERNAL for a response it cannot decode.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self):
        # Exception pickles its formatted args; rebuild from the two fields instead.
        return (type(self), (self.code, self.message))


def from_rpc_error(err: grpc.RpcError) -> TensorGateError:
    """The exception for a failed call of the sync or the asyncio API."""
    code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
    details = err.details() if callable(getattr(err, "details", None)) else ""
    return TensorGateError(code, details or "")
