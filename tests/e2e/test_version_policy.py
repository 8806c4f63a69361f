"""Version policies: latest 1 (default), all, specific. Version v computes INPUT0 + v."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from e2e_support import infer_input, status_of

X = np.array([[10.0], [20.0]], dtype=np.float32)


def _answer(client, model: str, version: str):
    """The version's constant (OUTPUT0 - INPUT0), or the error status."""
    try:
        result = client.infer(model, [infer_input("INPUT0", X)], model_version=version)
    except InferenceServerException as exc:
        return status_of(exc)
    response = result.get_response()
    if version:
        assert response.model_version == version
    offset = result.as_numpy("OUTPUT0") - X
    assert np.all(offset == offset[0, 0]), offset
    return int(offset[0, 0]), response.model_version


@pytest.mark.parametrize(
    "model, version, expected",
    [
        ("versioned", "", (3, "3")),
        ("versioned", "3", (3, "3")),
        ("versioned", "1", "NOT_FOUND"),
        ("versioned", "2", "NOT_FOUND"),
        ("versioned", "4", "NOT_FOUND"),
        ("versioned_all", "", (3, "3")),
        ("versioned_all", "1", (1, "1")),
        ("versioned_all", "2", (2, "2")),
        ("versioned_all", "3", (3, "3")),
        ("versioned_specific", "", (3, "3")),
        ("versioned_specific", "1", (1, "1")),
        ("versioned_specific", "2", "NOT_FOUND"),
        ("versioned_specific", "3", (3, "3")),
    ],
)
def test_version_policy(client, model, version, expected):
    assert _answer(client, model, version) == expected


def test_versions_in_statistics_are_separate(client):
    for v in ("1", "2", "2"):
        client.infer("versioned_all", [infer_input("INPUT0", X)], model_version=v)
    stats = {s.version: s for s in client.get_inference_statistics("versioned_all").model_stats}
    assert {"1", "2", "3"} <= set(stats)
    assert stats["2"].inference_stats.success.count >= 2
    one = client.get_inference_statistics("versioned_all", "1").model_stats
    assert [s.version for s in one] == ["1"]
