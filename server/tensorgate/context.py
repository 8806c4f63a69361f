"""The protocol-neutral view of one call, built once per call by its front end.

gRPC (grpc.aio and the native front end) and HTTP each turn their call into a
``RequestContext``; the data plane, the security checks and tracing read only this,
never a call object, so none of them knows which protocol a request came by.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

Metadata = Sequence[tuple[str, Union[str, bytes]]]


class RequestContext:
    """Deadline, caller metadata (gRPC metadata or HTTP headers, lowercase keys) and
    peer of one call, and the principal once credentials are checked.

    ``metadata`` and ``peer`` may be given as zero-argument callables: they are read
    only by what needs them (credentials, a sticky route's key, a trace parent, audit
    lines), and the hot path of an unauthenticated, untraced call never pays for them.
    ``lookup`` (key -> value or None), where the call offers one, answers ``header``
    while the metadata is unread, without reading every pair.
    """

    __slots__ = ("deadline", "_metadata", "_peer", "_lookup", "principal")

    def __init__(
        self,
        deadline: float,
        metadata: Metadata | Callable[[], Metadata] = (),
        peer: str | Callable[[], str] = "",
        lookup: Callable[[str], str | bytes | None] | None = None,
    ) -> None:
        self.deadline = deadline  # time.monotonic() seconds; 0: none
        self._metadata = metadata
        self._peer = peer
        self._lookup = lookup
        self.principal = None  # security.auth.Principal, set by the front end's check

    @property
    def metadata(self) -> Metadata:
        value = self._metadata
        if callable(value):
            value = self._metadata = value() or ()
        return value

    @property
    def peer(self) -> str:
        value = self._peer
        if callable(value):
            value = self._peer = value()
        return value

    def header(self, key: str) -> str | None:
        """The first value of ``key`` (lowercase), as text."""
        if self._lookup is not None and callable(self._metadata):
            value = self._lookup(key)
        else:
            for item in self.metadata:
                if item[0] == key:
                    value = item[1]
                    break
            else:
                return None
        return value.decode("latin-1") if isinstance(value, bytes) else value


# The context of work no caller waits on (shadow runs, warm-up).
INTERNAL = RequestContext(0.0, (), "internal")
