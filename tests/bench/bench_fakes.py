"""A tiny grpc.aio server that answers ModelInfer the way a test needs, in a thread.

It only knows ModelInfer (raw bytes in, an empty ModelInferResponse out), plus
optional faults: every Nth request fails with a chosen status, every request waits
``delay_s`` first. It counts what it saw (calls, ok, failed, the most requests in
flight at once), so a test can hold the harness' counts against the server's.
Its own event loop runs in a thread: the harness under test may block the main
thread (WorkerPool.run_step) or run its own loop there.
"""

from __future__ import annotations

import asyncio
import threading

import grpc

SERVICE = "inference.GRPCInferenceService"


class FakeServer:
    def __init__(self, *, fail_every: int = 0, fail_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                 delay_s: float = 0.0) -> None:
        self.fail_every = fail_every
        self.fail_code = fail_code
        self.delay_s = delay_s
        self.calls = self.ok = self.failed = 0
        self.in_flight = self.max_in_flight = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fake-v2-server", daemon=True)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _infer(self, request: bytes, context) -> bytes:
        self.calls += 1
        number = self.calls
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_every and number % self.fail_every == 0:
                self.failed += 1
                await context.abort(self.fail_code, f"request {number} fails on purpose")
            self.ok += 1
            return b""  # an empty ModelInferResponse is a valid one
        finally:
            self.in_flight -= 1

    async def _serve(self) -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._infer)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._stop = asyncio.Event()
        self._started.set()
        await self._stop.wait()
        await server.stop(grace=0.5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc
            self._started.set()
        finally:
            self._loop.close()

    def start(self) -> FakeServer:
        self._thread.start()
        self._started.wait(10)
        if self._error or not self.port:
            raise RuntimeError(f"fake server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
