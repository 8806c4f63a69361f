"""The Python client against a live server that has TLS, mutual TLS and bearer tokens
(``--tls-cert/--tls-key/--tls-client-ca``, ``--auth-tokens-file``): the client's
``tls`` and ``token`` options work with it, and its refusals come back as
TensorGateError with the server's code."""

from __future__ import annotations

import grpc
import pytest

from clients_support import import_client, reference_input
from e2e_support import start_server

import_client()
from tensorgate_client import TLS, Client, ConnectRetry, TensorGateError  # noqa: E402

ADMIN, INFER = "client-admin-4c1e", "client-infer-9a7b"


@pytest.fixture(scope="module")
def secure_server(pki):
    tokens = pki / "tokens.txt"
    tokens.write_text(f"{ADMIN} admin\n{INFER} infer\n")
    args = ("--tls-cert", pki / "server.pem", "--tls-key", pki / "server.key",
            "--tls-client-ca", pki / "ca.pem", "--auth-tokens-file", tokens)  # fmt: skip
    with start_server(None, *map(str, args)) as srv:
        yield srv


def _client(server, pki, token=None, client_cert=True) -> Client:
    tls = TLS.from_files(
        root_certificates=pki / "ca.pem",
        certificate_chain=pki / "client.pem" if client_cert else None,
        private_key=pki / "client.key" if client_cert else None,
    )
    return Client(server.grpc_url, tls=tls, token=token, timeout=10,
                  connect=ConnectRetry(timeout=1.0))  # fmt: skip


def test_tls_token_and_role_infer(secure_server, pki):
    with _client(secure_server, pki, token=INFER) as c:
        assert c.infer("simple_mlp", {"INPUT0": reference_input()})["OUTPUT0"].shape == (2, 8)
        with pytest.raises(TensorGateError) as err:
            c.unload_model("text_lower")  # needs the admin role
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_admin_token_may_load(secure_server, pki):
    with _client(secure_server, pki, token=ADMIN) as c:
        c.load_model("text_lower")
        assert c.model_ready("text_lower")


def test_no_token_is_unauthenticated(secure_server, pki):
    with _client(secure_server, pki) as c:
        with pytest.raises(TensorGateError) as err:
            c.is_ready()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED and err.value.message


def test_no_client_certificate_no_connection(secure_server, pki):
    with _client(secure_server, pki, token=INFER, client_cert=False) as c:
        with pytest.raises(TensorGateError) as err:
            c.is_ready()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
