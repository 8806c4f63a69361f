"""``AsyncClient``: the asyncio API, the same calls as ``Client``, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping

import grpc
import grpc.aio
import numpy as np

from tensorgate_client import calls, messages
from tensorgate_client.base import ClientBase
from tensorgate_client.config import Deadline
from tensorgate_client.errors import from_rpc_error
from tensorgate_client.messages import ParameterValue, StreamResult


class AsyncClient(ClientBase):
    """An asyncio client; arguments, results and errors as ``Client``'s (see there).

    Create it inside the event loop that uses it (``async with AsyncClient(...)``).
    """

    _transport = grpc.aio

    # -- plumbing ----------------------------------------------------------------------

    async def _connected(self, deadline: Deadline) -> None:
        """Return once the channel is READY, waiting as ``ConnectRetry`` says."""
        # get_state is a cheap read of the channel's state (no RPC, no dial).
        if self._channel.get_state(try_to_connect=False) is grpc.ChannelConnectivity.READY:
            return
        wait = self._config.connect_wait(deadline)
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._channel.channel_ready(), wait)
        except asyncio.TimeoutError:
            deadline.remaining()  # DEADLINE_EXCEEDED when that is what ran out
            raise self._config.not_connected(time.monotonic() - started) from None

    async def _call(self, call: calls.Call, timeout: float | None):
        deadline = self._config.deadline(timeout)
        await self._connected(deadline)
        try:
            response = await self._method(call)(call.request, **self._call_args(call, deadline))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return call.result(response)

    # -- server and models -------------------------------------------------------------

    async def is_live(self, *, timeout: float | None = None) -> bool:
        return await self._call(calls.server_live(), timeout)

    async def is_ready(self, *, timeout: float | None = None) -> bool:
        return await self._call(calls.server_ready(), timeout)

    async def model_ready(self, model: str, version: str | None = None, *,
                          timeout: float | None = None) -> bool:
        return await self._call(calls.model_ready(model, version), timeout)

    async def server_metadata(self, *, timeout: float | None = None):
        return await self._call(calls.server_metadata(), timeout)

    async def model_metadata(self, model: str, version: str | None = None, *,
                             timeout: float | None = None):
        return await self._call(calls.model_metadata(model, version), timeout)

    async def model_config(self, model: str, version: str | None = None, *,
                           timeout: float | None = None):
        return await self._call(calls.model_config(model, version), timeout)

    async def model_statistics(self, model: str | None = None, version: str | None = None, *,
                               timeout: float | None = None) -> list:
        return await self._call(calls.model_statistics(model, version), timeout)

    async def repository_index(self, *, ready_only: bool = False,
                               timeout: float | None = None) -> list:
        return await self._call(calls.repository_index(ready_only), timeout)

    async def load_model(self, model: str, *, timeout: float | None = None) -> None:
        await self._call(calls.load_model(model), timeout)

    async def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        await self._call(calls.unload_model(model), timeout)

    # -- inference ---------------------------------------------------------------------

    async def infer(
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
        """As ``Client.infer``."""
        call = calls.infer(model, inputs, outputs, version, route_key, request_id, parameters)
        return await self._call(call, timeout)

    async def stream_infer(
        self,
        model: str,
        requests: Iterable[Mapping[str, np.ndarray]] | AsyncIterable[Mapping[str, np.ndarray]],
        outputs: Iterable[str] | None = None,
        version: str | None = None,
        route_key: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamResult]:
        """As ``Client.stream_infer``; ``requests`` may also be an async iterable."""
        feed, deadline, metadata = self._stream_parts(model, requests, outputs, version, route_key, timeout)
        await self._connected(deadline)
        stream = self._stub.ModelStreamInfer(feed.__aiter__(), timeout=deadline.remaining(), metadata=metadata)
        try:
            async for response in stream:
                yield messages.stream_result(response)
        except grpc.RpcError as err:
            feed.raise_error()
            raise from_rpc_error(err) from None
        finally:
            stream.cancel()  # a consumer that stops early ends the stream
        feed.raise_error()

    # -- lifetime ----------------------------------------------------------------------

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
