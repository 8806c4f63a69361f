"""``Client``: the blocking API over the v2 protocol."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping

import grpc
import numpy as np

from tensorgate_client import calls, messages
from tensorgate_client.base import ClientBase
from tensorgate_client.config import Deadline
from tensorgate_client.errors import from_rpc_error
from tensorgate_client.messages import ParameterValue, StreamResult


class Client(ClientBase):
    """A blocking client for TensorGate (or any KServe v2 / Triton gRPC server).

    Constructor arguments: see ``ClientBase`` (url, tls, token, headers, timeout,
    connect, ...). Every failure raises ``TensorGateError`` carrying the gRPC status and
    the server's message. Thread-safe; use one per server and ``close()`` it (or use
    ``with``). Messages that carry more than one value (metadata, config, statistics)
    are returned as the protocol's protobuf messages.
    """

    def _opened(self) -> None:
        # The channel's state, kept current by gRPC's callback, so that a call on a
        # connected channel (nearly every call) costs no check.
        self._state = grpc.ChannelConnectivity.IDLE
        self._channel.subscribe(self._on_state, try_to_connect=False)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        self._state = state

    # -- plumbing ----------------------------------------------------------------------

    def _connected(self, deadline: Deadline) -> None:
        """Return once the channel is READY, waiting as ``ConnectRetry`` says."""
        if self._state is grpc.ChannelConnectivity.READY:
            return
        wait = self._config.connect_wait(deadline)
        started = time.monotonic()
        future = grpc.channel_ready_future(self._channel)
        try:
            future.result(timeout=wait)
        except grpc.FutureTimeoutError:
            future.cancel()
            deadline.remaining()  # DEADLINE_EXCEEDED when that is what ran out
            raise self._config.not_connected(time.monotonic() - started) from None

    def _call(self, call: calls.Call, timeout: float | None):
        deadline = self._config.deadline(timeout)
        self._connected(deadline)
        try:
            response = self._method(call)(call.request, **self._call_args(call, deadline))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return call.result(response)

    # -- server and models -------------------------------------------------------------

    def is_live(self, *, timeout: float | None = None) -> bool:
        return self._call(calls.server_live(), timeout)

    def is_ready(self, *, timeout: float | None = None) -> bool:
        return self._call(calls.server_ready(), timeout)

    def model_ready(self, model: str, version: str | None = None, *, timeout: float | None = None) -> bool:
        return self._call(calls.model_ready(model, version), timeout)

    def server_metadata(self, *, timeout: float | None = None):
        """``inference.ServerMetadataResponse``: name, version, extensions."""
        return self._call(calls.server_metadata(), timeout)

    def model_metadata(self, model: str, version: str | None = None, *, timeout: float | None = None):
        """``inference.ModelMetadataResponse``: versions, platform, inputs, outputs."""
        return self._call(calls.model_metadata(model, version), timeout)

    def model_config(self, model: str, version: str | None = None, *, timeout: float | None = None):
        """The model's ``inference.ModelConfig``."""
        return self._call(calls.model_config(model, version), timeout)

    def model_statistics(self, model: str | None = None, version: str | None = None, *,
                         timeout: float | None = None) -> list:
        """``inference.ModelStatistics`` per model version (every model when None)."""
        return self._call(calls.model_statistics(model, version), timeout)

    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list:
        """``ModelIndex`` (name, version, state, reason) per model version."""
        return self._call(calls.repository_index(ready_only), timeout)

    def load_model(self, model: str, *, timeout: float | None = None) -> None:
        self._call(calls.load_model(model), timeout)

    def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        self._call(calls.unload_model(model), timeout)

    # -- inference ---------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Iterable[str] | None = None,
        version: str | None = None,
        route_key: str | None = None,
        timeout: float | None = None,
        *,
        request_id: str | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (name -> array; the datatype follows the dtype,
        BYTES from object/bytes/str arrays) and return output name -> array: every
        output, or those named in ``outputs``. Numeric outputs are read-only views of
        the response; BYTES outputs are object arrays of ``bytes``.

        ``route_key`` goes as the request parameter ``route_key`` and the header
        ``x-tensorgate-route-key``, which TensorGate's routing will read to pick the
        version that serves a caller (today's server ignores both). ``parameters`` are
        more request parameters (``priority``, ``timeout`` in µs, as Triton).
        """
        call = calls.infer(model, inputs, outputs, version, route_key, request_id, parameters)
        return self._call(call, timeout)

    def stream_infer(
        self,
        model: str,
        requests: Iterable[Mapping[str, np.ndarray]],
        outputs: Iterable[str] | None = None,
        version: str | None = None,
        route_key: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[StreamResult]:
        """Send each inputs mapping of ``requests`` on one ModelStreamInfer stream and
        yield a ``StreamResult`` per response as it comes. The server runs a stream's
        requests concurrently, so the order may differ: ``result.id`` is the request's
        position. A failed request yields a result with ``error`` and the stream goes
        on; a failed stream raises ``TensorGateError``. ``timeout`` bounds the whole
        stream. If iterating ``requests`` raises, the stream is closed, the responses
        already due are yielded, then that exception is raised.
        """
        feed, deadline, metadata = self._stream_parts(model, requests, outputs, version, route_key, timeout)
        self._connected(deadline)
        stream = self._stub.ModelStreamInfer(iter(feed), timeout=deadline.remaining(), metadata=metadata)
        try:
            for response in stream:
                yield messages.stream_result(response)
        except grpc.RpcError as err:
            feed.raise_error()
            raise from_rpc_error(err) from None
        finally:
            stream.cancel()  # a consumer that stops early ends the stream
        feed.raise_error()

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        self._channel.unsubscribe(self._on_state)
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
