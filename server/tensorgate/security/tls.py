"""TLS and mutual TLS credentials for the gRPC port."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {str(path)!r}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the TLS {what} {str(path)!r} is not PEM")
    return data


@dataclass(frozen=True)
class TlsKeys:
    """PEM bytes for the gRPC port; with ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""

    chain: bytes
    key: bytes
    client_ca: bytes | None = None

    @classmethod
    def read(cls, cert: Path, key: Path, client_ca: Path | None = None) -> "TlsKeys":
        return cls(
            _read(cert, "certificate"),
            _read(key, "key"),
            _read(client_ca, "client CA") if client_ca is not None else None,
        )


def server_credentials(keys: TlsKeys) -> grpc.ServerCredentials:
    """grpc.aio's credentials for ``keys`` (the native front end takes the PEMs)."""
    return grpc.ssl_server_credentials(
        [(keys.key, keys.chain)],
        root_certificates=keys.client_ca,
        require_client_auth=keys.client_ca is not None,
    )
