"""Fixtures for the container test: podman, the image built from this checkout, and a
model repository to mount read-only.

The container tests build an image (two to three minutes the first time on a machine:
the debootstrap base, then the image; podman's layer cache makes later runs quick), so
they stay out of the quick local loop: they run with TENSORGATE_CONTAINER_TESTS=1 (CI
sets it, see .ci/run) and are marked ``container``. Where podman is missing they skip
with the reason, unless TENSORGATE_REQUIRE_CONTAINER=1, which makes them fail (CI).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tools" / "container"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "models"))
import build_models
import container_support as support

REQUIRED = os.environ.get("TENSORGATE_REQUIRE_CONTAINER") == "1"
ENABLED = REQUIRED or os.environ.get("TENSORGATE_CONTAINER_TESTS") == "1"
IMAGE = os.environ.get("TENSORGATE_TEST_IMAGE", "localhost/tensorgate:test-cpu")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "container: builds and runs the image with podman "
        "(TENSORGATE_CONTAINER_TESTS=1)"
    )


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(
        reason="container tests build an image (minutes): set TENSORGATE_CONTAINER_TESTS=1"
    )
    for item in items:
        if "container" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def podman_works() -> None:
    why = support.available()
    if why is None and os.geteuid() != 0:
        why = "the debootstrap base and the runc setup need root"
    if why is not None:
        if REQUIRED:
            pytest.fail(f"TENSORGATE_REQUIRE_CONTAINER=1 but {why}")
        pytest.skip(why)


@pytest.fixture(scope="session")
def image(podman_works, tmp_path_factory) -> str:
    """The CPU image of this checkout (tools/container/build_image.sh)."""
    log = tmp_path_factory.mktemp("image") / "build.log"
    return support.build_image(IMAGE, log)


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory) -> Path:
    """The demo repository, built by tests/models/build_models.py, readable by the
    image's user (uid 10001) and mounted read-only by the tests."""
    root = build_models.build_demo_repository(tmp_path_factory.mktemp("container") / "models")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@pytest.fixture
def tls(tmp_path) -> Path:
    """A directory with tls.crt (self-signed, for 127.0.0.1) and tls.key, readable by
    the image's user, as a kubernetes.io/tls Secret mounts them."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tensorgate")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("tensorgate"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    tls = tmp_path / "tls"
    tls.mkdir(mode=0o755)
    (tls / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls / "tls.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for path in tls.iterdir():
        path.chmod(0o644)  # a test key: the container's user must read it
    tls.chmod(0o755)
    return tls
