"""Who may call, how often, and over what: TLS, bearer tokens with roles, per-client
rate limits, the server-wide in-flight cap and the audit log.

Everything here is off by default. The inference servicer holds one ``Guard`` (or
``None`` when every check is off, so the hot path pays a single ``if``) and calls it
inline rather than through a grpc.aio interceptor: an interceptor costs an extra
coroutine on every RPC (see bench/security_micro.py and the README).
"""

from tensorgate.security.auth import ADMIN, INFER, Principal, TokenTable, token_id
from tensorgate.security.guard import Guard
from tensorgate.security.ratelimit import RateLimiter
from tensorgate.security.tls import server_credentials

__all__ = [
    "ADMIN", "INFER", "Guard", "Principal", "RateLimiter", "TokenTable", "server_credentials",
    "token_id",
]
