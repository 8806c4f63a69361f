"""Fixtures for the client tests: one real ``tensorgate serve`` (the bundled demo
repository) per test module, started with tests/e2e's helper."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from clients_support import make_pki  # noqa: E402
from e2e_support import start_server  # noqa: E402


@pytest.fixture(scope="module")
def server():
    with start_server(None) as srv:
        yield srv


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """CA, server and client certificates (see clients_support.make_pki)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
