"""Bearer tokens with roles.

Tokens come from a file (``--auth-tokens-file``: one ``TOKEN ROLE[,ROLE]`` per line, ``#``
comments) and/or ``TENSORGATE_AUTH_TOKENS`` (the same entries separated by ``;``). Roles:
``infer`` (inference, metadata, statistics, index) and ``admin`` (load/unload; implies
``infer``). A presented token is hashed with SHA-256 and the digest looked up: the
lookup's timing depends on the digest, never on how much of a real token the caller
guessed. Tokens are never logged; log lines name ``token_id`` (8 hex digits of the hash).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

INFER = "infer"
ADMIN = "admin"
ROLES = (INFER, ADMIN)
MAX_TOKEN_LEN = 4096

_sha256 = hashlib.sha256


def token_id(token: str | bytes) -> str:
    """What logs call a token: the first 8 hex digits of its SHA-256."""
    raw = token.encode() if isinstance(token, str) else token
    return _sha256(raw).hexdigest()[:8]


@dataclass(frozen=True)
class Principal:
    token_id: str
    roles: frozenset[str]


def parse_entries(lines, source: str) -> list[tuple[str, frozenset[str]]]:
    """``TOKEN ROLE[,ROLE]`` entries -> (token, roles); errors name the source and entry
    number, never the token."""
    out = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"{source}, entry {number}: expected 'TOKEN ROLE[,ROLE]'")
        token, role_text = parts
        if len(token) > MAX_TOKEN_LEN or not token.isprintable():
            raise ValueError(f"{source}, entry {number}: token too long or not printable")
        roles = {r.strip() for r in role_text.split(",") if r.strip()}
        unknown = roles - set(ROLES)
        if not roles or unknown:
            raise ValueError(
                f"{source}, entry {number}: unknown role(s) {sorted(unknown) or '(none)'}; "
                f"roles are {', '.join(ROLES)}"
            )
        if ADMIN in roles:
            roles.add(INFER)
        out.append((token, frozenset(roles)))
    return out


class TokenTable:
    """Configured tokens, held only as SHA-256 digests."""

    def __init__(self, entries: list[tuple[str, frozenset[str]]]) -> None:
        self._by_digest: dict[bytes, Principal] = {}
        for token, roles in entries:
            digest = _sha256(token.encode()).digest()
            old = self._by_digest.get(digest)
            merged = roles | old.roles if old else roles
            self._by_digest[digest] = Principal(digest.hex()[:8], frozenset(merged))

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def load(cls, path: Path | None, env_value: str | None) -> "TokenTable | None":
        """The table from a file and/or the env value; None when neither configures any."""
        entries = []
        if path is not None:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read auth tokens file {str(path)!r}: {exc.strerror}")
            entries += parse_entries(text.splitlines(), f"auth tokens file {str(path)!r}")
        if env_value:
            entries += parse_entries(env_value.split(";"), "TENSORGATE_AUTH_TOKENS")
        if path is None and not entries:
            return None
        if not entries:
            raise ValueError(f"auth tokens file {str(path)!r} holds no token")
        return cls(entries)

    def lookup(self, token: bytes) -> Principal | None:
        return self._by_digest.get(_sha256(token).digest())
