"""End-to-end fixtures over the real ``tensorgate serve`` (see e2e_support.py).

``test_repo`` is the test model repository (tests/models/build_models.py), built once
per session; ``server`` is one server over it per test module, and ``client`` a
tritonclient.grpc client for that server.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from e2e_support import build_models, start_server


@pytest.fixture(scope="session")
def test_repo(tmp_path_factory) -> Path:
    """The test model repository, built once per session (read-only for servers)."""
    return build_models.build_test_repository(tmp_path_factory.mktemp("test_repository"))


@pytest.fixture(scope="module")
def control_repo(test_repo, tmp_path_factory) -> Path:
    """A private copy of the test repository for a module that changes it on disk."""
    repo = tmp_path_factory.mktemp("private") / "repo"
    shutil.copytree(test_repo, repo)
    return repo


@pytest.fixture(scope="module")
def server(test_repo):
    with start_server(test_repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()
