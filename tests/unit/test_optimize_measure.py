"""tensorgate optimize's measurements without models: differences, top-1 agreement,
data from a version's tests, batch feeds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tensorgate.optimize import measure


def _spec(wire="FP32", numpy=np.float32, optional=False):
    return SimpleNamespace(dtype=SimpleNamespace(wire=wire, numpy=numpy), optional=optional)


def test_differences_and_top1_agreement():
    d = measure.OutputDiff("OUT")
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]], np.float32)
    new = np.array([[0.2, 0.8], [0.3, 0.7], [0.5, 0.4]], np.float32)
    d.add(ref, new)
    assert d.max_abs == pytest.approx(0.5) and d.top1_rows == 3 and d.top1_agree == 2
    assert d.mean_abs == pytest.approx((0.1 * 2 + 0.5 * 2) / 6)
    report = d.report()
    assert report["top1_agreement"] == pytest.approx(2 / 3)
    one_column = measure.OutputDiff("P")  # one score per row: not a classifier's top-1
    one_column.add(np.zeros((4, 1)), np.ones((4, 1)))
    assert one_column.top1_agreement is None and one_column.max_abs == 1.0


def test_nan_and_integer_outputs():
    d = measure.OutputDiff("OUT")
    d.add(np.array([1.0, 2.0]), np.array([1.0, np.nan]))
    assert d.max_abs == float("inf")  # a NaN where the original has a number
    ints = measure.OutputDiff("IDX")
    ints.add(np.array([3, 1, 2], np.int64), np.array([3, 2, 2], np.int64))
    assert ints.mismatched == 1 and ints.max_abs == 1.0
    with pytest.raises(measure.DataError, match="shape"):
        ints.add(np.zeros(2), np.zeros(3))


def test_accuracy_over_outputs():
    acc = measure.Accuracy({"a": measure.OutputDiff("a"), "b": measure.OutputDiff("b")})
    acc.outputs["a"].add(np.zeros(4), np.full(4, 0.1))
    acc.outputs["b"].add(np.zeros(4), np.full(4, 0.3))
    assert acc.max_abs == pytest.approx(0.3) and acc.mean_abs == pytest.approx(0.2)


def test_feeds_from_version_tests_and_user_data(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(6, 2)
    np.savez(tmp_path / "case.npz", INPUT0=x, **{"expected/OUT": x})
    np.savez(tmp_path / "slice.npz", INPUT0=x[:2], label=np.zeros(2))
    (tmp_path / "tests.json").write_text(json.dumps({
        "cases": [{"data": "case.npz"}, {"data": "case.npz"}],
        "slices": [{"data": "slice.npz", "metric": "accuracy", "min": 0}]}))
    feeds = measure.feeds_from_version_tests(tmp_path, {"INPUT0": _spec()})
    assert [measure.rows_of(f) for f in feeds] == [6, 2]  # each file once
    assert feeds[0]["INPUT0"].dtype == np.float32  # cast to the input's type
    with pytest.raises(measure.DataError, match="no array for input 'OTHER'"):
        measure.load_feeds(tmp_path / "case.npz", {"OTHER": _spec()})
    with pytest.raises(measure.DataError, match="expected an .npz"):
        measure.load_feeds(tmp_path / "tests.json", {"INPUT0": _spec()})


def test_batch_feed_repeats_rows():
    feed = {"x": np.arange(3)}
    assert measure.batch_feed(feed, 7)["x"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert measure.batch_feed(feed, 2)["x"].tolist() == [0, 1]
