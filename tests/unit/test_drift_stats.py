"""Drift statistics against hand-computed values; features, profile round trip, the
monitor's windows and queue, prediction drift and the /metrics families."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from tensorgate.dtypes import BY_WIRE
from tensorgate.observability.drift import DriftMonitor, VersionMonitor, prediction_drift
from tensorgate.observability.drift import features as F
from tensorgate.observability.drift import profile as P
from tensorgate.observability.drift import stats as S
from tensorgate.observability.metrics import DriftCollector, exposition
from tensorgate.tensors import TensorSpec


def spec(name, wire="FP32", dims=(1,)):
    return TensorSpec(name, BY_WIRE[wire], tuple(dims), None)


# -- stats ---------------------------------------------------------------------------


def test_psi_by_hand():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    assert S.psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(
        0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert S.psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0


def test_psi_floors_empty_bins_at_epsilon():
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
    assert S.psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1]) == pytest.approx(expected)
    assert S.psi([0.5, 0.5, 0.0], [0.5, 0.4, 0.1], epsilon=1e-2) == pytest.approx(
        (0.4 - 0.5) * math.log(0.8) + (0.1 - 0.01) * math.log(10))


def test_psi_floor_is_half_a_row_of_each_side():
    # an empty decile in a 100-row window: floored at 0.5 / 100, not at 1e-4
    expected = [0.1] * 10
    actual = [0.0] + [0.1] * 8 + [0.2]
    by_hand = ((0.005 - 0.1) * math.log(0.005 / 0.1) + (0.2 - 0.1) * math.log(2))
    assert S.psi(expected, actual, actual_rows=100) == pytest.approx(by_hand)
    assert S.psi(expected, actual) > S.psi(expected, actual, actual_rows=100)
    # half a row below epsilon: epsilon wins
    assert S.psi(expected, actual, actual_rows=10 ** 6) == pytest.approx(S.psi(expected, actual))
    # the reference side too: a value beyond its range in one row of 5000
    e, a = [0.0, 0.5, 0.5], [0.0002, 0.4999, 0.4999]
    assert S.psi(e, a, expected_rows=2000, actual_rows=5000) < S.psi(e, a) < 0.002


def test_ks_by_hand():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    # at 2: F_ref 0.5, F_x 0; at 4: 1.0 vs 0.5
    assert S.ks(ref, np.array([3.0, 4.0, 5.0, 6.0])) == pytest.approx(0.5)
    assert S.ks(ref, np.array([4.0, 1.0, 3.0, 2.0])) == 0.0
    assert S.ks(ref, np.array([10.0, 11.0])) == 1.0
    assert S.ks(ref, np.array([np.nan, 10.0])) == 1.0  # NaN left out
    assert math.isnan(S.ks(ref, np.array([])))


def test_quantile_edges_and_bins_by_hand():
    edges = S.quantile_edges(np.arange(1, 11, dtype=float), bins=2)
    assert edges.tolist() == [1.0, 5.5, np.nextafter(10.0, np.inf)]
    # below min | [1, 5.5) | [5.5, just above 10) | above max
    assert S.bin_counts(edges, np.array([0, 1, 5, 6, 10, 11])).tolist() == [1, 2, 2, 1]
    assert S.bin_counts(edges, np.array([np.nan])).tolist() == [0, 0, 0, 1]


def test_ten_quantile_bins_hold_a_tenth_each():
    values = np.arange(1000, dtype=float)
    edges = S.quantile_edges(values)
    assert len(edges) == 11  # min, 9 deciles, above max
    fr = S.fractions(S.bin_counts(edges, values))
    assert fr[0] == fr[-1] == 0.0
    assert np.allclose(fr[1:-1], 0.1)


def test_a_constant_feature_still_sees_a_shift():
    edges = S.quantile_edges(np.zeros(100))
    assert len(edges) == 2
    ref = S.fractions(S.bin_counts(edges, np.zeros(100)))
    assert ref.tolist() == [0.0, 1.0, 0.0]
    same = S.fractions(S.bin_counts(edges, np.zeros(50)))
    moved = S.fractions(S.bin_counts(edges, np.ones(50)))
    assert S.psi(ref, same) == 0.0
    assert S.psi(ref, moved) > 10


def test_summary_reservoir_categories():
    s = S.summary(np.array([1.0, 2.0, 3.0, np.nan]))
    assert (s["count"], s["nan"], s["mean"], s["min"], s["max"], s["p50"]) == (4, 1, 2.0, 1.0,
                                                                              3.0, 2.0)
    assert S.summary(np.array([np.nan]))["mean"] is None
    sample = S.reservoir(np.arange(5000.0), 100)
    assert len(sample) == 100 and np.all(np.diff(sample) > 0)
    assert S.reservoir(np.array([3.0, np.nan, 1.0]), 100).tolist() == [1.0, 3.0]
    assert S.top_categories(["b", "a", "b", "c", "a", "b"], 2) == ["b", "a"]
    assert S.top_categories(["y", "x"], 5) == ["x", "y"]  # ties: sorted


# -- features ------------------------------------------------------------------------


def test_plan_per_tensor_kind():
    inputs = {"SMALL": spec("SMALL", dims=(2, 3)), "BIG": spec("BIG", dims=(3, 64, 64)),
              "SEQ": spec("SEQ", "INT64", (-1,)), "TEXT": spec("TEXT", "BYTES", (1,))}
    outputs = {"OUT": spec("OUT", dims=(2,))}
    names = [f.name for f in F.plan(inputs, outputs)]
    assert names == ["SMALL[0]", "SMALL[1]", "SMALL[2]", "SMALL[3]", "SMALL[4]", "SMALL[5]",
                     "BIG:mean", "BIG:norm", "SEQ:mean", "SEQ:norm", "SEQ:length",
                     "TEXT:length", "TEXT:category", "OUT[0]", "OUT[1]"]


def test_extractor_values_by_hand():
    feats = F.plan({"X": spec("X", dims=(-1,))}, {})
    (ex,) = F.extractors(feats)
    m = ex.matrix([np.array([[3.0, 4.0]], np.float32), np.array([[1.0, 1.0, 1.0, 1.0]])])
    assert m.tolist() == [[3.5, 5.0, 2.0], [1.0, 2.0, 4.0]]  # mean, norm, length
    (ex,) = F.extractors(F.plan({"Y": spec("Y", "INT32", (3,))}, {}))
    rows = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    assert ex.matrix([rows, rows[:1]]).tolist() == [[1, 2, 3], [4, 5, 6], [1, 2, 3]]
    feats = F.plan({"T": spec("T", "BYTES", (2,))}, {})
    (ex,) = F.extractors(feats, {"T": ["cat", "dog"]})
    arr = np.array([["dog", "émile"], ["cat", "cat"]], dtype=object)
    # every element once: UTF-8 length, category code (2 = other)
    assert ex.matrix([arr]).tolist() == [[3, 1], [6, 2], [3, 0], [3, 0]]


def test_extractor_chunks_rows_through_its_buffer(monkeypatch):
    monkeypatch.setattr(F, "SCRATCH_BYTES", 1100)  # 2 rows of 64 floats: 512 bytes
    (ex,) = F.extractors(F.plan({"X": spec("X", dims=(64,))}, {}))
    rng = np.random.default_rng(9)
    arrays = [rng.standard_normal((2, 64)).astype(np.float32) for _ in range(7)]
    arrays.append(np.frombuffer(b"\0" + arrays[0].tobytes(), np.float32, offset=1
                                ).reshape(2, 64))  # unaligned, as a view of a request
    rows = np.concatenate(arrays).astype(np.float64)
    m = ex.matrix(arrays)
    assert np.allclose(m[:, 0], rows.mean(axis=1), atol=1e-6)
    assert np.allclose(m[:, 1], np.linalg.norm(rows, axis=1), rtol=1e-5)


# -- profile and monitor -------------------------------------------------------------


def _model(batched=True, name="m", version=1):
    return SimpleNamespace(
        name=name, version=version, version_str=str(version), label=f"{name}:{version}",
        max_batch_size=8 if batched else 0,
        inputs={"X": spec("X", dims=(2,))}, outputs={"Y": spec("Y", dims=(1,))},
    )


def _refs(model, x, y):
    feats = F.plan(model.inputs, model.outputs)
    entries = P.build(feats, {("input", "X"): [x], ("output", "Y"): [y]}, bins=10)
    doc = {"format": P.FORMAT, "features": entries}
    return P.parse(doc)[1]


def test_profile_round_trip_and_validation():
    rng = np.random.default_rng(0)
    model = _model()
    x = rng.standard_normal((2000, 2))
    refs = _refs(model, x, x[:, :1] * 2)
    assert [r.feature.name for r in refs] == ["X[0]", "X[1]", "Y[0]"]
    assert len(refs[0].edges) == 11 and len(refs[0].sample) == 1000
    assert refs[0].fractions.sum() == pytest.approx(1.0)
    with pytest.raises(P.ProfileError, match="format"):
        P.parse({"features": []})
    with pytest.raises(P.ProfileError, match="edges must ascend"):
        P.parse({"format": P.FORMAT, "features": [
            {"name": "a", "source": "input", "tensor": "X", "kind": "element",
             "edges": [2.0, 1.0], "fractions": [0, 1, 0]}]})


def test_monitor_windows_by_rows_and_psi_against_the_profile():
    rng = np.random.default_rng(1)
    model = _model()
    x = rng.standard_normal((5000, 2))
    monitor = VersionMonitor(model, _refs(model, x, x[:, :1]), window_secs=3600,
                             window_rows=200)

    def requests(shift, n):
        out = []
        for _ in range(n):
            xi = rng.standard_normal((8, 2)) + shift
            out.append(({"X": xi}, {"Y": xi[:, :1]}))
        return out

    monitor.add(requests(0.0, 24), now=1.0)  # 192 rows: not yet a window
    assert monitor.last is None and monitor.rows_total == 192
    monitor.add(requests(0.0, 1), now=2.0)  # 200: closes at the request that filled it
    calm = monitor.last
    assert calm.rows == 200 and monitor.windows == 1
    assert set(calm.psi) == {"X[0]", "X[1]", "Y[0]"} and calm.score < 0.2
    assert max(calm.ks.values()) < 0.15
    monitor.add(requests(1.0, 25), now=3.0)
    shifted = monitor.last
    assert shifted.score > 0.5 and shifted.worst in ("X[0]", "X[1]", "Y[0]")
    assert shifted.ks["X[0]"] > 0.25
    # a time-closed window needs MIN_WINDOW_ROWS rows, else it is extended
    monitor.window_secs = 0.0
    monitor.add(requests(0.0, 2), now=4.0)
    assert monitor.tick(10.0) is None
    monitor.add(requests(0.0, 11), now=5.0)
    assert monitor.tick(10.0) is not None and monitor.last.rows == 104


def test_prediction_drift_between_two_versions():
    rng = np.random.default_rng(2)
    a, b = _model(version=1), _model(version=2)
    x = rng.standard_normal((3000, 2))
    stable = VersionMonitor(a, _refs(a, x, x[:, :1]), 3600, 500)
    cand = VersionMonitor(b, _refs(b, x, x[:, :1] + 2), 3600, 500)
    for m, shift in ((stable, 0.0), (cand, 0.0)):
        xi = rng.standard_normal((500, 2))
        m.add([({"X": xi}, {"Y": xi[:, :1] + shift})], now=1.0)
    value, feature = prediction_drift(stable, stable.last, cand.last)
    assert feature == "Y[0]" and value < 0.2
    xi = rng.standard_normal((500, 2))
    cand.add([({"X": xi}, {"Y": xi[:, :1] + 2})], now=2.0)
    value, feature = prediction_drift(stable, stable.last, cand.last)
    assert feature == "Y[0]" and value > 2


def test_unbatched_model_counts_one_row_per_request():
    model = _model(batched=False)
    x = np.random.default_rng(3).standard_normal((500, 2))
    monitor = VersionMonitor(model, _refs(model, x, x[:, :1]), 3600, 10)
    monitor.add([({"X": x[i]}, {"Y": x[i, :1]}) for i in range(10)], now=1.0)
    assert monitor.last.rows == 10


def test_observe_samples_bounds_and_counts_drops():
    model = _model()
    x = np.random.default_rng(4).standard_normal((500, 2))
    observers: list = []
    drift = DriftMonitor(SimpleNamespace(), observers, 60, 5000, capacity=3)
    # as DriftMonitor._load makes them: the drift thread's queue and bound
    monitor = VersionMonitor(model, _refs(model, x, x[:, :1]), 3600, 10, queue=drift._queue,
                             capacity=drift.capacity, ratio=drift.ratio)
    model.drift_monitor = monitor
    bare = SimpleNamespace(name="other")  # a version without a profile attribute
    ok = SimpleNamespace(model=model, arrays={"X": x[:1]}, outputs={"Y": x[:1, :1]})
    for _ in range(5):
        drift.observe(ok)
    drift.observe(SimpleNamespace(model=bare, arrays={}, outputs={}))
    drift.observe(SimpleNamespace(model=model, arrays={"X": x[:1]}, outputs=None))  # failed
    assert len(drift._queue) == 3 and monitor.dropped == 2
    drift._queue.clear()
    monitor.ratio = 0.25  # --drift-sample-ratio, as the monitor carries it
    queued = 0
    for _ in range(2000):
        drift.observe(ok)
        queued += len(drift._queue)
        drift._queue.clear()
    assert 400 < queued < 600 and monitor.dropped == 2  # sampled out, not dropped


def test_collector_exposes_the_contract_names():
    model = _model()
    x = np.random.default_rng(5).standard_normal((500, 2))
    monitor = VersionMonitor(model, _refs(model, x, x[:, :1]), 3600, 100)
    model.drift_monitor = monitor
    idle = _model(name="idle")
    idle.drift_monitor = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DriftCollector(lambda: [model, idle]))
    text = exposition(registry).decode()
    assert 'tensorgate_drift_rows_total{model="m",version="1"} 0.0' in text
    assert 'tensorgate_drift_cpu_seconds_total{model="m",version="1"} 0.0' in text
    assert "tensorgate_drift_score{" not in text  # no window closed yet
    monitor.add([({"X": x[:100] + 3}, {"Y": x[:100, :1] + 3})], now=1.0)
    text = exposition(registry).decode()
    assert 'tensorgate_drift_psi{feature="X[0]",model="m",version="1"}' in text
    assert 'tensorgate_drift_ks{feature="Y[0]",model="m",version="1"}' in text
    score = float(text.split('tensorgate_drift_score{model="m",version="1"} ')[1].split()[0])
    assert score == pytest.approx(monitor.last.score) and score > 1
    assert 'model="idle"' not in text


def test_alert_rule_uses_the_contract_names():
    import re
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "drift-alert.yaml"
    rules = [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]
    used = set(re.findall(r"\btensorgate_\w+", " ".join(r["expr"] for r in rules)))
    assert used == {"tensorgate_drift_score", "tensorgate_drift_dropped_total"}


def _image_model():
    """A version whose input is too large for elementwise features: mean and norm."""
    return SimpleNamespace(
        name="img", version=1, version_str="1", label="img:1", max_batch_size=64,
        batcher=SimpleNamespace(observer=None),
        inputs={"X": spec("X", dims=(3, 16, 16))}, outputs={"Y": spec("Y", dims=(1,))},
    )


def test_row_moments_matches_numpy_and_refuses_what_it_cannot_read():
    from tensorgate._ext.rowstats import row_moments

    rng = np.random.default_rng(6)
    parts = [rng.standard_normal((5, 1000)).astype(np.float32),
             rng.standard_normal((3, 7)),  # float64, a width below one vector
             rng.standard_normal((4, 2000)).astype(np.float32)[:, :1500]]  # strided rows
    n = sum(len(p) for p in parts)
    sums, sumsq = np.empty(n), np.empty(n)
    row_moments(parts, sums, sumsq)
    flat = [row.astype(np.float64) for p in parts for row in p]
    np.testing.assert_allclose(sums, [r.sum() for r in flat], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(sumsq, [(r * r).sum() for r in flat], rtol=1e-5)
    for bad in ([np.ones((2, 3), np.int64)], [np.ones(3, np.float32)],
                [np.ones((2, 6), np.float32)[:, ::2]], [np.ones((2, 3), ">f4")]):
        with pytest.raises(ValueError):
            row_moments(bad, sums, sumsq)
    with pytest.raises(ValueError, match="at least one value per row"):
        row_moments(parts, np.empty(2), np.empty(2))


def test_row_summaries_writes_mean_norm_and_length_columns():
    from tensorgate._ext.rowstats import row_summaries

    rng = np.random.default_rng(9)
    # a convnet row's width and more (several 1024-value blocks, a 16-lane tail), a
    # float64 part, and empty rows (no mean)
    parts = [rng.standard_normal((3, 12_301)).astype(np.float32), rng.standard_normal((2, 5)),
             np.empty((2, 0), np.float32)]
    out = np.full((7, 4), -7.0)
    row_summaries(parts, out, 2, 0, 3)  # column 1 is not written
    flat = [row.astype(np.float64) for p in parts for row in p]
    np.testing.assert_allclose(out[:5, 2], [r.mean() for r in flat[:5]], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out[:, 0], [np.sqrt((r * r).sum()) for r in flat], rtol=1e-6)
    assert np.isnan(out[5:, 2]).all() and (out[:, 1] == -7).all()
    assert out[:, 3].tolist() == [12_301] * 3 + [5] * 2 + [0] * 2
    with pytest.raises(ValueError, match="row per array row"):
        row_summaries(parts, np.empty((6, 4)), 0, 1, 2)
    with pytest.raises(ValueError, match="outside"):
        row_summaries(parts, out, 0, 4, -1)
    with pytest.raises(ValueError):
        row_summaries([np.ones((2, 3), np.int64)], np.empty((2, 3)), 0, 1, 2)


def test_summaries_read_rows_in_place_and_agree_with_numpy():
    rng = np.random.default_rng(7)
    feats = F.plan({"X": spec("X", dims=(3, 16, 16))}, {})
    ex = F.extractors(feats)[0]
    arrays = [rng.standard_normal((k, 3, 16, 16)).astype(np.float32) for k in (1, 4, 2)]
    m = ex.matrix(arrays)
    rows = np.concatenate(arrays).reshape(7, -1).astype(np.float64)
    assert [f.name for f in ex.features] == ["X:mean", "X:norm"]
    np.testing.assert_allclose(m[:, 0], rows.mean(1), atol=1e-6)
    np.testing.assert_allclose(m[:, 1], np.sqrt((rows * rows).sum(1)), rtol=1e-6)
    # big-endian rows: the native pass refuses them, numpy's way gives the same
    swapped = ex.matrix([a.astype(">f4") for a in arrays])
    np.testing.assert_allclose(swapped, m, rtol=1e-6, atol=1e-9)
    # token ids of varying length: widened, and a length feature per row
    var = F.extractors(F.plan({"T": spec("T", "INT64", dims=(-1,))}, {}))[0]
    m = var.matrix([np.array([[1, 2, 3]]), np.array([[4, 4], [0, 0]])])
    np.testing.assert_allclose(m, [[2, np.sqrt(14), 3], [4, np.sqrt(32), 2], [0, 0, 2]])


def test_batches_are_summarised_on_the_worker_and_fill_windows_by_rows():
    rng = np.random.default_rng(8)
    model = _image_model()
    x = rng.standard_normal((1000, 3, 16, 16)).astype(np.float32)
    refs = P.parse({"format": P.FORMAT, "features": P.build(
        F.plan(model.inputs, model.outputs),
        {("input", "X"): [x], ("output", "Y"): [x[:, 0, 0, :1]]}, bins=10)})[1]
    monitor = VersionMonitor(model, refs, 3600, 100)
    assert not monitor.per_request  # it has a batcher: fed by its tap, not the observer

    def batch(rows, shift=0.0):
        feed = {"X": rng.standard_normal((rows, 3, 16, 16)).astype(np.float32) + shift}
        return ([SimpleNamespace(rows=1, inputs=None, outputs=None)] * rows, feed,
                {"Y": feed["X"][:, 0, 0, :1]})

    monitor.tap(*batch(60))
    kind, matrices, rows = monitor.queue[-1][1:]
    assert kind == 1 and rows == 60 and matrices[0].shape == (60, 2)
    monitor.add_matrices(matrices, rows, now=1.0)
    assert monitor.last is None
    monitor.tap(*batch(60))
    monitor.add_matrices(*monitor.queue[-1][2:], now=2.0)  # 120: closes at this batch
    assert monitor.last.rows == 120 and monitor.last.score < 0.5
    # summarised in two steps (inputs before the run, outputs after): the same matrices
    _, feed, outputs = batch(40)
    pending = [SimpleNamespace(rows=1, inputs=None, outputs=None)] * 40
    monitor.tap(pending, feed, outputs)
    whole = monitor.queue[-1][2]
    early = monitor.gathered(pending, feed)
    assert early[1][1] is None  # the output's part is left for after the run
    monitor.tap(pending, feed, outputs, early)
    split = monitor.queue[-1][2]
    assert monitor.queue[-1][3] == 40
    for a, b in zip(whole, split):
        np.testing.assert_array_equal(a, b)
    # a padded or failed batch: each request's own arrays, failures left out
    good = SimpleNamespace(rows=2, inputs={"X": x[:2] + 3}, outputs={"Y": x[:2, 0, 0, :1]})
    failed = SimpleNamespace(rows=1, inputs={"X": x[:1]}, outputs=None)
    monitor.tap([good, failed, good], None, None)
    assert monitor.queue[-1][3] == 4
    # sampling keeps about the ratio's share of rows
    monitor.ratio = 0.25
    kept = 0
    for _ in range(40):
        monitor.tap(*batch(50))
        kept += monitor.queue[-1][3]
    assert 350 < kept < 650
    # a full queue drops the batch's requests and counts them
    monitor.capacity = len(monitor.queue)
    monitor.tap(*batch(5))
    assert monitor.dropped == 5
