"""Security and limits against the real server: TLS, mutual TLS, bearer tokens with
roles, the audit log, per-client rate limits, message / tensor / BYTES-element limits.

Certificates (a CA, a server cert for 127.0.0.1, client certs from that CA and from a
stranger CA) are made at test time with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import time

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from e2e_support import model_subset, server_env, start_server

ADMIN_TOKEN = "admin-7f3c9a1e5b"
INFER_TOKEN = "infer-2d8e4b6a0c"
ENV_TOKEN = "env-9b1d7f3e5a"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_repo(test_repo, tmp_path_factory):
    """A few models of the test repository, so each server here starts fast."""
    return model_subset(test_repo, tmp_path_factory.mktemp("security_repo"))


def _cert(subject_cn, issuer_key, issuer_name, public_key, ca=False, san_ip=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san_ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(san_ip)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    elif not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256()), name


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root = tmp_path_factory.mktemp("certs")

    def pem_key(key):
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem_cert(cert):
        return cert.public_bytes(serialization.Encoding.PEM)

    out = {}
    for ca_label in ("ca", "stranger_ca"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert, ca_name = _cert(f"tensorgate test {ca_label}", ca_key, None,
                                 ca_key.public_key(), ca=True)
        out[ca_label] = pem_cert(ca_cert)
        for label, ip in (("server", "127.0.0.1"), ("client", None)):
            if ca_label == "stranger_ca" and label == "server":
                continue
            key = ec.generate_private_key(ec.SECP256R1())
            cert, _ = _cert(f"{label}.test", ca_key, ca_name, key.public_key(), san_ip=ip)
            prefix = label if ca_label == "ca" else f"stranger_{label}"
            out[f"{prefix}_cert"], out[f"{prefix}_key"] = pem_cert(cert), pem_key(key)
    paths = {}
    for label, data in out.items():
        path = root / f"{label}.pem"
        path.write_bytes(data)
        paths[label] = path
    paths["pem"] = out
    return paths


def _live(channel, metadata=None, timeout=5.0):
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    return stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout, metadata=metadata).live


def _infer_request(model="identity_fp32", values=(1.0, 2.0, 3.0)):
    arr = np.asarray(values, dtype=np.float32).reshape(1, -1)
    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=list(arr.shape))
    del t
    req.raw_input_contents.append(arr.tobytes())
    return req


def _code(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# --------------------------------------------------------------------------- TLS


def test_tls_serves_encrypted_and_refuses_plaintext(small_repo, certs):
    with start_server(
        small_repo, "--tls-cert", str(certs["server_cert"]), "--tls-key", str(certs["server_key"])
    ) as srv:
        assert "gRPC security: TLS" in srv.log
        creds = grpc.ssl_channel_credentials(root_certificates=certs["pem"]["ca"])
        with grpc.secure_channel(srv.grpc_url, creds) as ch:
            assert _live(ch)
            stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
            out = stub.ModelInfer(_infer_request(), timeout=10)
            np.testing.assert_array_equal(
                np.frombuffer(out.raw_output_contents[0], np.float32), [1, 2, 3]
            )
        with grpc.insecure_channel(srv.grpc_url) as ch:
            code, _ = _code(_live, ch, timeout=3)
            assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_cert_from_the_ca(small_repo, certs):
    with start_server(
        small_repo,
        "--tls-cert", str(certs["server_cert"]),
        "--tls-key", str(certs["server_key"]),
        "--tls-client-ca", str(certs["ca"]),
    ) as srv:
        assert "gRPC security: mutual TLS" in srv.log
        pem = certs["pem"]
        good = grpc.ssl_channel_credentials(pem["ca"], pem["client_key"], pem["client_cert"])
        with grpc.secure_channel(srv.grpc_url, good) as ch:
            assert _live(ch)
        no_cert = grpc.ssl_channel_credentials(pem["ca"])
        stranger = grpc.ssl_channel_credentials(
            pem["ca"], pem["stranger_client_key"], pem["stranger_client_cert"]
        )
        for creds in (no_cert, stranger):
            with grpc.secure_channel(srv.grpc_url, creds) as ch:
                code, _ = _code(_live, ch, timeout=3)
                assert code == grpc.StatusCode.UNAVAILABLE


def test_tls_flags_must_come_together(small_repo, certs):
    with pytest.raises(RuntimeError, match="--tls-cert and --tls-key must be given together"):
        with start_server(small_repo, "--tls-cert", str(certs["server_cert"])):
            pass


# --------------------------------------------------------------------------- auth


@pytest.fixture(scope="module")
def auth_server(small_repo, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# test tokens\n{ADMIN_TOKEN} admin\n{INFER_TOKEN} infer\n")
    env = server_env(TENSORGATE_AUTH_TOKENS=f"{ENV_TOKEN} infer")
    with start_server(small_repo, "--auth-tokens-file", str(tokens), env=env) as srv:
        yield srv


def _bearer(token):
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def auth_stub(auth_server):
    with grpc.insecure_channel(auth_server.grpc_url) as ch:
        yield service_pb2_grpc.GRPCInferenceServiceStub(ch), ch


def test_auth_infer_role(auth_stub):
    stub, _ = auth_stub
    for token in (INFER_TOKEN, ADMIN_TOKEN, ENV_TOKEN):
        out = stub.ModelInfer(_infer_request(), metadata=_bearer(token), timeout=10)
        assert out.model_name == "identity_fp32"
        assert stub.ModelMetadata(
            pb.ModelMetadataRequest(name="identity_fp32"), metadata=_bearer(token), timeout=5
        ).name == "identity_fp32"


@pytest.mark.parametrize(
    "metadata, needle",
    [
        ((), "missing credentials"),
        ((("authorization", "Bearer wrong-token"),), "not known"),
        ((("authorization", f"Basic {INFER_TOKEN}"),), "missing credentials"),
        ((("authorization", "Bearer "),), "missing credentials"),
    ],
)
def test_auth_missing_or_wrong_token_is_unauthenticated(auth_stub, metadata, needle):
    stub, _ = auth_stub
    calls = [
        lambda: stub.ModelInfer(_infer_request(), metadata=metadata, timeout=5),
        lambda: stub.ServerMetadata(pb.ServerMetadataRequest(), metadata=metadata, timeout=5),
        lambda: stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=metadata, timeout=5),
        lambda: stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="identity_fp32"),
            metadata=metadata, timeout=5,
        ),
    ]
    for call in calls:
        code, details = _code(call)
        assert code == grpc.StatusCode.UNAUTHENTICATED, details
        assert needle in details


def test_auth_stream_needs_a_token(auth_stub):
    stub, _ = auth_stub
    code, details = _code(lambda: list(stub.ModelStreamInfer(iter([_infer_request()]), timeout=5)))
    assert code == grpc.StatusCode.UNAUTHENTICATED, details
    replies = list(
        stub.ModelStreamInfer(iter([_infer_request()]), metadata=_bearer(INFER_TOKEN), timeout=5)
    )
    assert len(replies) == 1 and not replies[0].error_message


def test_auth_admin_role_for_load_and_unload(auth_server, auth_stub):
    stub, _ = auth_stub
    unload = pb.RepositoryModelUnloadRequest(model_name="identity_bytes")
    load = pb.RepositoryModelLoadRequest(model_name="identity_bytes")
    code, details = _code(stub.RepositoryModelUnload, unload, metadata=_bearer(INFER_TOKEN),
                          timeout=5)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'admin' role" in details
    stub.RepositoryModelUnload(unload, metadata=_bearer(ADMIN_TOKEN), timeout=30)
    stub.RepositoryModelLoad(load, metadata=_bearer(ADMIN_TOKEN), timeout=60)
    assert stub.ModelReady(
        pb.ModelReadyRequest(name="identity_bytes"), metadata=_bearer(INFER_TOKEN), timeout=5
    ).ready
    # The audit log: one line per admin action and per denied call, never a token.
    deadline = time.monotonic() + 5
    while "RepositoryModelLoad" not in auth_server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    log = auth_server.log
    from tensorgate.security import token_id

    assert ("admin rpc=RepositoryModelUnload peer=ipv4:127.0.0.1:" in log)
    assert f"token={token_id(ADMIN_TOKEN)} model=identity_bytes outcome=ok" in log
    assert (
        "denied rpc=RepositoryModelUnload peer=ipv4:127.0.0.1:" in log
        and f"token={token_id(INFER_TOKEN)} reason=needs role admin" in log
    )
    assert "tensorgate.audit" in log
    for token in (ADMIN_TOKEN, INFER_TOKEN, ENV_TOKEN):
        assert token not in log


def test_auth_leaves_health_and_reflection_open(auth_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(auth_server.grpc_url) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        ))
        names = {s.name for s in replies[0].list_services_response.service}
        assert "inference.GRPCInferenceService" in names


# --------------------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limited_server(small_repo):
    with start_server(
        small_repo,
        "--max-message-mb", "1",
        "--max-tensor-elements", "1000",
        "--max-bytes-element", "16",
        "--rate-limit-rps", "5",
        "--rate-limit-burst", "20",
    ) as srv:
        yield srv


def test_message_size_limit_is_named(limited_server):
    with grpc.insecure_channel(limited_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        big = _infer_request(values=np.zeros(300_000, dtype=np.float32))  # 1.2 MB
        code, details = _code(stub.ModelInfer, big, timeout=10)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details  # grpc's own text: "... (1200046 vs. 1048576)"


def _pace():
    time.sleep(0.25)  # stay within 5 requests/s: these tests check other limits


def test_tensor_element_limit_is_named(limited_server):
    with grpc.insecure_channel(limited_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        _pace()
        stub.ModelInfer(_infer_request(values=np.zeros(1000, dtype=np.float32)), timeout=10)
        _pace()
        code, details = _code(
            stub.ModelInfer, _infer_request(values=np.zeros(1001, dtype=np.float32)), timeout=10
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "more than 1000 elements" in details and "--max-tensor-elements" in details
        _pace()
        huge = pb.ModelInferRequest(model_name="identity_fp32")
        huge.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 2**62])
        huge.raw_input_contents.append(b"\0" * 8)
        started = time.monotonic()
        code, details = _code(stub.ModelInfer, huge, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert time.monotonic() - started < 2.0


def _bytes_request(items):
    req = pb.ModelInferRequest(model_name="identity_bytes")
    req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, len(items)])
    req.raw_input_contents.append(
        b"".join(len(x).to_bytes(4, "little") + x for x in items)
    )
    return req


def test_bytes_element_limit_is_named(limited_server):
    with grpc.insecure_channel(limited_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        _pace()
        stub.ModelInfer(_bytes_request([b"x" * 16, b"y"]), timeout=10)
        _pace()
        code, details = _code(stub.ModelInfer, _bytes_request([b"ok", b"z" * 17]), timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "element 1 holds 17 bytes" in details and "--max-bytes-element" in details
        _pace()
        typed = pb.ModelInferRequest(model_name="identity_bytes")
        t = typed.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 1])
        t.contents.bytes_contents.append(b"q" * 40)
        code, details = _code(stub.ModelInfer, typed, timeout=10)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "--max-bytes-element" in details


def test_rate_limit_per_client(limited_server):
    time.sleep(4.5)  # let the bucket refill after the tests above
    with grpc.insecure_channel(limited_server.grpc_url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        codes = []
        for _ in range(40):
            code, details = _code(stub.ModelInfer, _infer_request(), timeout=10)
            codes.append(code)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "rate limit exceeded" in details and "--rate-limit-rps" in details
        ok = codes.count(grpc.StatusCode.OK)
        assert 20 <= ok <= 30, codes  # the burst, plus what refilled meanwhile
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 40 - ok
        time.sleep(1.0)
        assert _code(stub.ModelInfer, _infer_request(), timeout=10)[0] == grpc.StatusCode.OK
