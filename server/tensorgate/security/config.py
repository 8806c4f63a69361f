"""Settings -> the security and limit objects the server is built with."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tensorgate.security.auth import TokenTable
from tensorgate.security.guard import Guard
from tensorgate.security.tls import TlsKeys
from tensorgate.tensors import Limits

AUTH_TOKENS_ENV = "TENSORGATE_AUTH_TOKENS"


@dataclass(frozen=True)
class Security:
    guard: Guard | None
    limits: Limits
    tls: TlsKeys | None  # None: plaintext
    summary: str  # for the log; never holds a token


def from_settings(settings, environ=None) -> Security:
    """Raises ValueError (message fit for the log) on unreadable or malformed files."""
    environ = os.environ if environ is None else environ
    tokens = TokenTable.load(settings.auth_tokens_file, environ.get(AUTH_TOKENS_ENV))
    guard = Guard.build(
        tokens, settings.rate_limit_rps, settings.rate_limit_burst, settings.max_inflight
    )
    message_bytes = settings.max_message_mb * 1024 * 1024
    if settings.max_tensor_elements:
        limits = Limits(settings.max_tensor_elements, settings.max_bytes_element,
                        "--max-tensor-elements")
    else:
        # Every element takes at least one byte of the message, so a tensor can never
        # hold more elements than the largest message has bytes.
        limits = Limits(message_bytes, settings.max_bytes_element, "--max-message-mb")
    tls = None
    if settings.tls_cert is not None:
        tls = TlsKeys.read(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    parts = [
        "mutual TLS" if settings.tls_client_ca else "TLS" if tls else "plaintext",
        f"auth: {len(tokens)} token(s)" if tokens is not None else "auth: off",
    ]
    if guard is not None and guard.limiter is not None:
        parts.append(f"rate limit: {guard.limiter.describe()} per client")
    if settings.max_inflight:
        parts.append(f"max in flight: {settings.max_inflight}")
    return Security(guard, limits, tls, ", ".join(parts))
