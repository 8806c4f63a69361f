"""TLS and mutual TLS credentials for the gRPC port."""

from __future__ import annotations

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


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """Server certificate chain + key; with ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""
    chain = _read(cert, "certificate")
    private = _read(key, "key")
    root = _read(client_ca, "client CA") if client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(private, chain)],
        root_certificates=root,
        require_client_auth=root is not None,
    )
