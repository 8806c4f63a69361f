"""Connection settings shared by ``Client`` and ``AsyncClient``: TLS, credentials,
headers, deadlines and how a call waits for a connection."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from tensorgate_client import _trace
from tensorgate_client.errors import TensorGateError
from tensorgate_client.messages import ROUTE_KEY_HEADER


@dataclass(frozen=True)
class TLS:
    """TLS for the channel. PEM bytes; ``root_certificates=None`` trusts the system's
    roots. Give ``private_key`` and ``certificate_chain`` together for mutual TLS.
    ``server_name`` overrides the name checked against the server's certificate (for a
    server reached by IP or through a tunnel)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("TLS: private_key and certificate_chain go together (mutual TLS)")

    @classmethod
    def from_files(cls, root_certificates=None, certificate_chain=None, private_key=None,
                   server_name: str | None = None) -> TLS:
        """The same, from PEM file paths."""
        def read(path):
            return None if path is None else Path(path).read_bytes()

        return cls(read(root_certificates), read(private_key), read(certificate_chain), server_name)


@dataclass(frozen=True)
class ConnectRetry:
    """How long a call waits for a connection before anything is sent.

    This is the client's only retrying, and why only here: while the channel has no
    connection, a request has not left the process, so waiting and dialling again is
    safe for every call, including ones that must not run twice (an inference on a
    stateful model, a load or unload). Once a request went out, an UNAVAILABLE (or any
    other failure) may come after the server ran it, because a connection can break
    between the server's work and its answer; resending would run it twice, so the
    error is raised to the caller, who knows whether the call is idempotent.

    A call on a channel that is not connected waits up to ``timeout`` seconds (never past
    the call's own deadline) for gRPC to connect, which dials again with exponential
    backoff from ``initial_backoff`` to ``max_backoff`` seconds; then it fails with
    UNAVAILABLE. ``timeout=0`` gives one connection attempt.
    """

    timeout: float = 5.0
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if not (0 <= self.timeout <= 3600):
            raise ValueError("ConnectRetry.timeout: 0 to 3600 seconds")
        if not (0.01 <= self.initial_backoff <= self.max_backoff <= 120):
            raise ValueError("ConnectRetry: 0.01 <= initial_backoff <= max_backoff <= 120 seconds")

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.initial_reconnect_backoff_ms", int(self.initial_backoff * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self.max_backoff * 1000)),
        ]


# Shortest wait for a connection, so that timeout=0 still lets one attempt finish.
_ONE_ATTEMPT_S = 0.5


class Deadline:
    """A call's deadline as a ``time.monotonic()`` instant (None: no deadline)."""

    __slots__ = ("at",)

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left for the RPC; DEADLINE_EXCEEDED once none are."""
        if self.at is None:
            return None
        left = self.at - time.monotonic()
        if left <= 0:
            raise TensorGateError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the request was sent"
            )
        return left


class ClientConfig:
    """Everything a client needs besides its channel, validated once."""

    def __init__(
        self,
        url: str,
        *,
        tls: TLS | None,
        token: str | None,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        connect: ConnectRetry,
        max_message_mb: int,
        channel_options: Sequence[tuple[str, object]],
    ) -> None:
        if not url or "://" in url:
            raise ValueError(f"url is HOST:PORT (gRPC target), not {url!r}")
        if not (1 <= max_message_mb <= 2047):
            raise ValueError("max_message_mb: 1 to 2047")
        if timeout is not None:
            Deadline(timeout)  # validates
        self.url = url
        self.tls = tls
        self.timeout = timeout
        self.connect = connect
        size = max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            *connect.channel_options(),
        ]
        if tls is not None and tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        self.options = options + list(channel_options)  # the caller's last: they win
        static = [(key.lower(), value) for key, value in (headers or {}).items()]
        if token:
            # As a header rather than gRPC call credentials, which refuse plaintext
            # channels: a token on a loopback or in-mesh plaintext channel is common.
            static.append(("authorization", f"Bearer {token}"))
        self.static_metadata = tuple(static)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        return grpc.ssl_channel_credentials(
            self.tls.root_certificates, self.tls.private_key, self.tls.certificate_chain
        )

    def deadline(self, timeout: float | None) -> Deadline:
        return Deadline(self.timeout if timeout is None else timeout)

    def connect_wait(self, deadline: Deadline) -> float:
        """How long this call may wait for a connection."""
        wait = max(self.connect.timeout, _ONE_ATTEMPT_S)
        left = deadline.remaining()
        return wait if left is None else min(wait, left)

    def not_connected(self, waited: float) -> TensorGateError:
        return TensorGateError(
            grpc.StatusCode.UNAVAILABLE,
            f"no connection to {self.url} within {waited:.1f} s; the request was not sent",
        )

    def metadata(self, route_key: str | None = None) -> tuple[tuple[str, str], ...]:
        """Headers for one call: static ones, the route key, the caller's trace context."""
        extra = _trace.trace_headers()
        if route_key:
            extra.append((ROUTE_KEY_HEADER, route_key))
        return self.static_metadata + tuple(extra) if extra else self.static_metadata
