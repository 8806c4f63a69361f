"""The request side of a stream, guarded against the caller's iterable failing.

gRPC iterates a stream's requests on its own thread (sync) or task (asyncio); when that
iteration raises, gRPC logs the exception and cancels the call, so the caller sees only
CANCELLED. ``RequestFeed`` instead ends the requests there (a half-close: the responses
already due still arrive) and keeps the exception for the caller to re-raise.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Iterable


class RequestFeed:
    def __init__(self, source: Iterable | AsyncIterable, convert: Callable) -> None:
        self._source = source
        self._convert = convert  # (position, item) -> request message
        self.error: BaseException | None = None

    def __iter__(self):
        try:
            for i, item in enumerate(self._source):
                yield self._convert(i, item)
        except Exception as exc:
            self.error = exc

    async def __aiter__(self):
        try:
            if isinstance(self._source, AsyncIterable):
                i = 0
                async for item in self._source:
                    yield self._convert(i, item)
                    i += 1
            else:
                for i, item in enumerate(self._source):
                    yield self._convert(i, item)
        except Exception as exc:
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
