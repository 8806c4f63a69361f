"""The HTTP/1.1 connection layer of the REST front end: asyncio + httptools.

httptools (llhttp, the parser uvicorn uses) parses; this module owns connections:
keep-alive, pipelined requests answered in order, ``Expect: 100-continue``, a body
limit (``--max-message-mb``: 413 and close), malformed requests (400 and close), and a
graceful stop that lets every request already read finish. Measured against aiohttp,
uvicorn+httptools and granian on the same handler (issue 13's note): the thinnest
layer costs the event loop least, and the event loop is what a 2-core server runs out
of first.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus

import httptools
import orjson

log = logging.getLogger("tensorgate.http")

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASONS[499] = b"Client Closed Request"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024
# After refusing a body as too large, keep reading (and dropping) what the client still
# sends for this long, so that it gets to read the 413 instead of a broken pipe.
LINGER_S = 5.0
# Pipelined requests read ahead of the one being answered: past this many, stop reading
# the socket until the backlog halves (the client's own writes then block).
MAX_PIPELINED = 16


def _peer(transport) -> str:
    """The caller as gRPC names it: ``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000``."""
    address = transport.get_extra_info("peername")
    if not address:
        return "unknown"
    host, port = address[0], address[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class _Request:
    __slots__ = ("method", "path", "headers", "body", "keep_alive")


class HttpConnection(asyncio.Protocol):
    """One client connection; requests on it are answered one at a time, in order."""

    def __init__(self, server: "HttpServer") -> None:
        self.server = server
        self.service = server.service
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self._url = b""
        self._headers: list = []
        self._header_bytes = 0
        self._body: list = []
        self._body_size = 0
        self._queue: list[_Request] = []
        self._task: asyncio.Task | None = None
        self._closing = False
        self._paused = False
        self._discard = 0  # bytes still to drop after a 413 (lingering close)
        self._last = 0.0  # loop time of the last bytes read or answer written
        self._idle_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.peer = _peer(transport)
        self.server.connections.add(self)
        self._last = asyncio.get_running_loop().time()
        if self.server.idle_timeout > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(
                self.server.idle_timeout, self._check_idle
            )

    def _check_idle(self) -> None:
        """Close a kept-alive connection that sent nothing for --http-idle-timeout-secs
        (a request being answered is not idle)."""
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        left = self._last + self.server.idle_timeout - loop.time()
        if self._task is None and not self._queue and left <= 0:
            self._closing = True
            self.transport.close()
            return
        self._idle_timer = loop.call_later(max(left, 0.1), self._check_idle)

    def connection_lost(self, exc) -> None:
        self.server.connections.discard(self)
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._task is not None:
            self._task.cancel()  # the caller went away: its request leaves the queue

    def data_received(self, data: bytes) -> None:
        self._last = asyncio.get_running_loop().time()
        if self._discard:
            self._discard -= min(self._discard, len(data))
            if not self._discard:
                self.transport.close()
            return
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            # A callback's own exception arrives wrapped (HttpParserCallbackError).
            cause = exc.__context__
            if isinstance(cause, _TooLarge):
                self._fail(413, str(cause), linger=True)
            else:
                self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _TooLarge(f"request headers over {MAX_HEADER_BYTES} bytes")
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == "content-length" and value.isdigit() and int(value) > self.server.max_body:
                raise _TooLarge(self._too_large())
            if name == "expect" and value.lower() == "100-continue":
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body:
            raise _TooLarge(self._too_large())
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = _Request()
        request.method = self.parser.get_method().decode("ascii")
        url = httptools.parse_url(self._url)
        request.path = url.path.decode("latin-1")
        request.headers = self._headers
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        request.keep_alive = self.parser.should_keep_alive()
        self._queue.append(request)
        if len(self._queue) >= MAX_PIPELINED and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._serve())

    def _too_large(self) -> str:
        return (f"request body over {self.server.max_body} bytes, the limit "
                f"(--max-message-mb)")

    # -- answering -------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self._queue and not self._closing:
                request = self._queue.pop(0)
                if self._paused and len(self._queue) <= MAX_PIPELINED // 2:
                    self._paused = False
                    self.transport.resume_reading()
                self.server.active += 1
                try:
                    status, headers, body = await self.service.handle(
                        request.method, request.path, request.headers, request.body,
                        self.peer,
                    )
                finally:
                    self.server.active -= 1
                keep_alive = request.keep_alive and not self.server.stopping
                self._write(status, headers, body, keep_alive,
                            head_only=request.method == "HEAD")
                self._last = asyncio.get_running_loop().time()
                if not keep_alive:
                    self._closing = True
                    self.transport.close()
        except asyncio.CancelledError:
            pass
        finally:
            self._task = None

    def _write(self, status: int, headers: list, body: bytes, keep_alive: bool,
               head_only: bool = False) -> None:
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
        for name, value in headers:
            parts.append(b"%s: %s\r\n" % (name, value))
        parts.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(body)
        self.transport.write(b"".join(parts))

    def _fail(self, status: int, message: str, linger: bool = False) -> None:
        """A request that cannot be parsed: answer and close (nothing after it on this
        connection can be trusted to be framed right). ``linger``: first drop what the
        client is still sending (up to a body's limit more, for LINGER_S), so that a
        client that writes its whole body before reading gets the answer."""
        if self._closing:
            return
        self._closing = True
        body = b'{"error":%s}' % _json_string(message)
        self._write(status, [(b"content-type", b"application/json")], body, False)
        if linger:
            self._discard = self.server.max_body + MAX_HEADER_BYTES
            asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()

    def close_if_idle(self) -> None:
        if self._task is None and not self._queue:
            self._closing = True
            self.transport.close()


class _TooLarge(Exception):
    pass


def _json_string(text: str) -> bytes:
    return orjson.dumps(text)


class HttpServer:
    """The listening socket(s) and every open connection."""

    def __init__(self, service, max_body: int, idle_timeout: float = 0.0) -> None:
        self.service = service
        self.max_body = max_body
        self.idle_timeout = idle_timeout  # seconds; 0: keep idle connections open
        self.connections: set[HttpConnection] = set()
        self.active = 0  # requests being answered
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
        """Listen; returns the bound port (``port`` 0 picks one)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), host, port, ssl=ssl_context, reuse_address=True,
            backlog=1024,
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float) -> None:
        """Stop accepting, answer what was read (up to ``grace`` s), close the rest."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.active and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.connections):
            connection.transport.close()
        if self._server is not None:
            await self._server.wait_closed()


def ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """TLS for the HTTP port from the same PEM files as gRPC's (mutual with a CA)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
