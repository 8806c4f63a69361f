"""Tests of ``tensorgate batch`` (server/tensorgate/batch): outputs against in-process
ONNX Runtime for every input format, error rows, resume after SIGKILL, the Ray path.

tests/models goes on sys.path for the model builders, and this directory for the
helpers (batch_support.py), a name no other test directory uses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "models", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

pytest.importorskip("pyarrow")

import build_models  # noqa: E402


@pytest.fixture(scope="session")
def batch_test_repo(tmp_path_factory) -> Path:
    """The e2e test repository (tests/models/build_models.py), built once."""
    return build_models.build_test_repository(tmp_path_factory.mktemp("batch_test_repository"))


@pytest.fixture(scope="session")
def varlen_repo(tmp_path_factory) -> Path:
    return build_models.build_varlen_repository(tmp_path_factory.mktemp("batch_varlen_repository"))
