"""The audit log: one line per admin action and per denied call.

Lines go to the ``tensorgate.audit`` logger (route it with ordinary logging config).
They name the peer and the token id (the first 8 hex digits of the token's SHA-256),
never the token.
"""

from __future__ import annotations

import logging

audit_log = logging.getLogger("tensorgate.audit")


def denied(rpc: str, peer: str, token: str, reason: str) -> None:
    audit_log.warning("denied rpc=%s peer=%s token=%s reason=%s", rpc, peer, token, reason)


def admin_action(rpc: str, peer: str, token: str, target: str, outcome: str) -> None:
    audit_log.info(
        "admin rpc=%s peer=%s token=%s model=%s outcome=%s", rpc, peer, token, target, outcome
    )
