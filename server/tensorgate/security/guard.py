"""The per-call checks, run inline by every front end: credentials, role, rate,
in-flight.

``Guard.check`` is O(1): one scan of the call's (few) metadata entries, one SHA-256 of
the token, one dict probe, one bucket update. It reads the call's protocol-neutral
``RequestContext`` (gRPC metadata or HTTP headers alike). Errors carry the status they
map to (errors.py) and messages that name the limit or the missing role, never the
token.
"""

from __future__ import annotations

from tensorgate.context import RequestContext
from tensorgate.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from tensorgate.security import audit
from tensorgate.security.auth import MAX_TOKEN_LEN, Principal, TokenTable, token_id
from tensorgate.security.ratelimit import RateLimiter

_BEARER = "bearer "


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.7:51234`` -> ``ipv4:10.0.0.7`` (one bucket per host, not per port)."""
    head, sep, tail = peer.rpartition(":")
    return head if sep and tail.isdigit() else peer


class Guard:
    """What the servicer asks before it does any work for a call."""

    def __init__(
        self,
        tokens: TokenTable | None = None,
        limiter: RateLimiter | None = None,
        max_inflight: int = 0,
    ) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.max_inflight = max_inflight
        self.inflight = 0

    @classmethod
    def build(
        cls, tokens: TokenTable | None, rps: float, burst: int, max_inflight: int
    ) -> "Guard | None":
        """A guard, or None when every check is off (the hot path then pays one ``if``)."""
        limiter = RateLimiter(rps, burst or max(1, int(-(-rps // 1)))) if rps > 0 else None
        if tokens is None and limiter is None and max_inflight <= 0:
            return None
        return cls(tokens, limiter, max(0, max_inflight))

    # -- credentials and rate ------------------------------------------------------------

    def check(self, ctx: RequestContext, role: str, rpc: str) -> Principal | None:
        """Authenticate and authorize a call and take a rate-limit token; raises
        Unauthenticated / PermissionDenied / ResourceExhausted."""
        principal = self.authorize(ctx, role, rpc)
        if self.limiter is not None:
            self.check_rate(ctx, principal)
        return principal

    def authorize(self, ctx: RequestContext, role: str, rpc: str) -> Principal | None:
        """The call's principal (None with auth off); raises Unauthenticated or
        PermissionDenied. No rate-limit token is taken."""
        if self.tokens is None:
            return None
        principal = self._authenticate(ctx, rpc)
        if role not in principal.roles:
            audit.denied(rpc, ctx.peer, principal.token_id, f"needs role {role}")
            raise PermissionDenied(f"{rpc} needs the '{role}' role, which this token lacks")
        return principal

    def check_rate(self, ctx: RequestContext, principal: Principal | None) -> None:
        """Take one token from the client's bucket (its token id, else its peer host)."""
        limiter = self.limiter
        if limiter is None:
            return
        key = principal.token_id if principal is not None else peer_host(ctx.peer)
        if not limiter.allow(key):
            raise ResourceExhausted(
                f"rate limit exceeded: this client may send {limiter.describe()} "
                f"(--rate-limit-rps, --rate-limit-burst)"
            )

    def _authenticate(self, ctx: RequestContext, rpc: str) -> Principal:
        token = None
        for item in ctx.metadata:
            if item[0] == "authorization":
                value = item[1]
                if isinstance(value, bytes):
                    value = value.decode("latin-1")
                if value[:7].lower() == _BEARER:
                    token = value[7:].strip()
                break
        if not token:
            audit.denied(rpc, ctx.peer, "-", "no bearer token")
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <token>'"
            )
        principal = (
            self.tokens.lookup(token.encode("utf-8", "surrogateescape"))
            if len(token) <= MAX_TOKEN_LEN
            else None
        )
        if principal is None:
            audit.denied(rpc, ctx.peer, token_id(token), "unknown token")
            raise Unauthenticated("invalid credentials: the bearer token is not known")
        return principal

    # -- server-wide in-flight cap -------------------------------------------------------

    def enter(self) -> None:
        """Count one more request in flight, or shed it at once when at the cap."""
        limit = self.max_inflight
        if limit and self.inflight >= limit:
            raise ResourceExhausted(
                f"server overloaded: {self.inflight} requests in flight, the limit is "
                f"{limit} (--max-inflight)"
            )
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1
