"""The metrics a version's slice checks use, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from tensorgate.runtime.version_tests import _metric


def test_accuracy_from_class_scores_and_from_one_score_column():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert _metric("accuracy", scores, np.array([0, 1, 1, 1])) == 0.75
    assert _metric("accuracy", np.array([[0.7], [0.2]]), np.array([1, 1])) == 0.5


def test_auc_is_the_probability_a_positive_outranks_a_negative():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert _metric("auc", scores.reshape(4, 1), labels) == pytest.approx(0.75)
    assert _metric("auc", np.array([[0.5], [0.5]]), np.array([0, 1])) == 0.5  # a tie
    assert np.isnan(_metric("auc", np.array([[0.5]]), np.array([1])))  # one class


def test_errors_against_targets():
    out = np.array([[1.0, 2.0], [3.0, 5.0]])
    target = np.array([[1.0, 2.5], [3.0, 4.0]])
    assert _metric("max_error", out, target) == 1.0
    assert _metric("mae", out, target) == pytest.approx(0.375)
    assert _metric("rmse", out, target) == pytest.approx(np.sqrt((0.25 + 1) / 4))
