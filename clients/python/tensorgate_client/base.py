"""What ``Client`` and ``AsyncClient`` share: construction (settings, channel, stub) and
the preparation of a stream. The two differ only in how they wait (block or await)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
import grpc.aio

from tensorgate_client import calls
from tensorgate_client._proto.inference import grpc_service_pb2_grpc as pb_grpc
from tensorgate_client.config import TLS, ClientConfig, ConnectRetry, Deadline
from tensorgate_client.feed import RequestFeed


class ClientBase:
    """Constructor arguments of both clients:

    ``url`` is ``HOST:PORT``. ``tls`` turns on TLS (``TLS(...)``: roots, client cert and
    key); ``token`` is sent as ``authorization: Bearer <token>``; ``headers`` go with
    every call. ``timeout`` is the default deadline of a call in seconds (None: none);
    each method's ``timeout`` overrides it. ``connect`` says how long a call waits for a
    connection (``ConnectRetry``: the one case where the client retries, and why).
    ``max_message_mb`` bounds messages both ways (the server's default is 256);
    ``channel_options`` are passed to gRPC last, so they win.
    """

    _transport = grpc  # grpc or grpc.aio: the module that makes the channel

    def __init__(
        self,
        url: str = "127.0.0.1:8001",
        *,
        tls: TLS | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        connect: ConnectRetry = ConnectRetry(),
        max_message_mb: int = 256,
        channel_options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self._config = ClientConfig(
            url, tls=tls, token=token, headers=headers, timeout=timeout, connect=connect,
            max_message_mb=max_message_mb, channel_options=channel_options,
        )  # fmt: skip
        credentials = self._config.credentials()
        options = self._config.options
        if credentials is None:
            self._channel = self._transport.insecure_channel(url, options=options)
        else:
            self._channel = self._transport.secure_channel(url, credentials, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # Service name -> stub on this channel (the control plane's joins here).
        self._stubs = {calls.INFERENCE: self._stub}
        self._opened()

    def _opened(self) -> None:
        """Called once the channel exists."""

    def _stream_parts(self, model, requests, outputs, version, route_key, timeout):
        """(request feed, deadline, metadata) for one ModelStreamInfer."""
        feed = RequestFeed(requests, calls.stream_request(model, outputs, version, route_key))
        return feed, self._config.deadline(timeout), self._config.metadata(route_key)

    def _method(self, call: calls.Call):
        return getattr(self._stubs[call.service], call.method)

    def _call_args(self, call: calls.Call, deadline: Deadline) -> dict:
        return {"timeout": deadline.remaining(), "metadata": self._config.metadata(call.route_key)}
