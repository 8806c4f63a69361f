"""The prediction log in process: per-model policies from config parameters, captures
to Arrow columns, hashes a user can recompute, rotation by size, write errors counted
(never raised), and the metrics collector."""

from __future__ import annotations

import hashlib
import logging
from types import SimpleNamespace

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from tensorgate._proto.inference import model_config_pb2 as mc  # noqa: E402
from tensorgate.dataplane import Outcome  # noqa: E402
from tensorgate.dtypes import BY_WIRE  # noqa: E402
from tensorgate.observability import prediction_log as plog  # noqa: E402
from tensorgate.tensors import TensorSpec  # noqa: E402


def _model(name="m", params=None, inputs=(("X", "FP32"), ("ID", "BYTES"))):
    config = mc.ModelConfig(name=name)
    for key, value in (params or {}).items():
        config.parameters[key].string_value = value
    return SimpleNamespace(
        name=name, version_str="1", config=config,
        inputs={n: TensorSpec(n, BY_WIRE[t], (-1,), None) for n, t in inputs},
        outputs={"Y": TensorSpec("Y", BY_WIRE["FP32"], (-1,), None)},
    )


def _outcome(model, request_id="r", x=None, ids=None, status="OK", **kw):
    arrays = None if x is None else {"X": x, "ID": ids}
    outputs = None if x is None else {"Y": x * 2}
    return Outcome(model, request_id, 5_000, status, arrays, outputs, False, **kw)


def test_policy_from_config_parameters(caplog):
    assert plog.policy_for(_model(), 0.5).ratio == 0.5
    policy = plog.policy_for(_model(params={
        "prediction_log_sample_ratio": "0.1", "prediction_log_drop": " ID ",
        "prediction_log_hash": "X"}), 1.0)
    assert policy.ratio == 0.1 and [(n, h) for n, _, h in policy.inputs] == [("X", True)]
    assert plog.policy_for(_model(params={"prediction_log_sample_ratio": "0"}), 1.0) is None
    caplog.set_level(logging.ERROR, logger="tensorgate.prediction_log")
    # A typo in a drop list turns the version's logging off rather than log the input.
    assert plog.policy_for(_model(params={"prediction_log_drop": "Id"}), 1.0) is None
    assert plog.policy_for(_model(params={"prediction_log_sample_ratio": "2"}), 1.0) is None
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "'Id', not an input" in messages and "expected a number in 0..1" in messages


def test_trace_ids():
    assert plog.trace_id(0x4BF92F3577B34DA6A3CE929D0E0E4736) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert plog.trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01") == (
        "4bf92f3577b34da6a3ce929d0e0e4736")
    for bad in (None, 0, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                "00-" + "z" * 32 + "-00f067aa0ba902b7-01"):
        assert plog.trace_id(bad) is None


def test_hashes_are_blake2b_of_the_v2_bytes():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert plog.blake2b_hex(x) == hashlib.blake2b(x.tobytes()).hexdigest()
    assert plog.blake2b_hex(x[:, ::2]) == hashlib.blake2b(x[:, ::2].tobytes()).hexdigest()
    ids = np.array([[b"alice"], [b"bob"]], dtype=object)
    wire = b"".join(len(w).to_bytes(4, "little") + w for w in ids.ravel())  # v2 BYTES
    assert plog.blake2b_hex(ids) == hashlib.blake2b(wire).hexdigest()


def test_captures_to_columns_with_nulls():
    model = _model(params={"prediction_log_hash": "ID"})
    policy = plog.policy_for(model, 1.0)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ids = np.array([[b"a"], [b"b"]], dtype=object)
    captures = [
        plog.capture(policy, _outcome(model, "ok", x, ids, route="ab", variant="m:1"),
                     10_000_000_000, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        plog.capture(policy, _outcome(model, "", status="INVALID_ARGUMENT"), 10_000_000_000),
    ]
    table = plog.to_table(policy, captures)
    rows = table.to_pylist()
    assert rows[0]["request_id"] == "ok" and rows[1]["request_id"] is None
    assert rows[0]["route"] == "ab" and rows[0]["variant"] == "m:1" and rows[1]["route"] is None
    assert rows[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert rows[0]["latency_us"] == 5 and rows[0]["timestamp"].timestamp() == pytest.approx(
        10 - 5e-6)
    assert rows[0]["input.X"] == x.tobytes() and rows[0]["input_shape.X"] == [2, 3]
    assert rows[0]["input_blake2b.ID"] == plog.blake2b_hex(ids)
    assert rows[1]["input.X"] is None and rows[1]["input_shape.X"] is None
    assert rows[1]["output.Y"] is None and rows[1]["status"] == "INVALID_ARGUMENT"
    field = table.schema.field("output.Y")
    assert field.type == pa.binary() and field.metadata[b"datatype"] == b"FP32"
    y, missing = plog.tensors(table, "output.Y")
    np.testing.assert_array_equal(y, x * 2)
    assert y.dtype == np.float32 and missing is None


def test_views_and_other_byte_orders_are_stored_as_v2_bytes():
    # Variable-length batching slices outputs along a padded axis (views), and a
    # request may arrive big-endian: the log stores little-endian row-major bytes.
    model = _model(inputs=(("X", "FP32"),))
    policy = plog.policy_for(model, 1.0)
    x = np.arange(12, dtype=">f4").reshape(3, 4)
    y = np.arange(24, dtype=np.float32).reshape(2, 12)[:, ::3]
    outcome = Outcome(model, "r", 1000, "OK", {"X": x}, {"Y": y}, False)
    table = plog.to_table(policy, [plog.capture(policy, outcome, 0)])
    row = table.to_pylist()[0]
    assert row["input.X"] == x.astype("<f4").tobytes() and row["input_shape.X"] == [3, 4]
    assert row["output.Y"] == np.ascontiguousarray(y).tobytes()
    np.testing.assert_array_equal(plog.tensors(table, "output.Y")[0], y)


def test_bytes_tensors_round_trip():
    model = _model(inputs=(("ID", "BYTES"),))
    policy = plog.policy_for(model, 1.0)
    ids = np.array([[b"alice", b""], [b"\xff", b"bob"]], dtype=object)
    y = np.zeros((2, 1), np.float32)
    outcome = Outcome(model, "r", 1000, "OK", {"ID": ids}, {"Y": y}, False)
    table = plog.to_table(policy, [plog.capture(policy, outcome, 0)])
    (back,) = plog.tensors(table, "input.ID")
    assert back.shape == (2, 2) and back.tolist() == ids.tolist()


def _log(tmp_path, **kw):
    return plog.PredictionLog(tmp_path / "logs", **kw)


def test_rotation_by_size_and_flush_on_close(tmp_path):
    log = _log(tmp_path, rotate_bytes=2048)
    model = _model(inputs=(("X", "FP32"),))
    for i in range(50):
        x = np.full((1, 64), i, np.float32)  # 256 bytes each
        log.observe(Outcome(model, f"r{i}", 1000, "OK", {"X": x}, {"Y": x}, False))
    log.observe(Outcome(model, "shadow", 1000, "OK", {"X": x}, {"Y": x}, True))  # not logged
    log.close()
    files = sorted((tmp_path / "logs" / "m").glob("*/part-*.parquet"))
    assert len(files) > 1 and not list((tmp_path / "logs").rglob("*.tmp"))
    table = pq.read_table(tmp_path / "logs" / "m")
    assert sorted(table.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(50))
    assert log.rows_written == 50 and log.files_written == len(files) and log.buffered == 0
    assert log.bytes_written == sum(f.stat().st_size for f in files)


def test_write_errors_are_counted_not_raised(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="tensorgate.prediction_log")
    log = _log(tmp_path)
    (tmp_path / "logs" / "m").write_text("a file where the model's folder should be")
    model = _model(inputs=(("X", "FP32"),))
    x = np.ones((1, 4), np.float32)
    for i in range(3):
        log.observe(Outcome(model, f"r{i}", 1000, "OK", {"X": x}, {"Y": x}, False))
    log.close()
    assert log.dropped_error == 3 and log.rows_written == 0 and log.buffered == 0
    assert "writing m's rows failed" in caplog.text


def test_a_capture_the_writer_cannot_read_is_counted_and_the_writer_goes_on(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="tensorgate.prediction_log")
    log = _log(tmp_path)
    model = _model(inputs=(("X", "FP32"),))
    x = np.ones((1, 4), np.float32)
    # Outputs that are not a dict of arrays: sizing the drain's captures fails.
    log.observe(Outcome(model, "bad", 1000, "OK", {"X": x}, [("Y", x)], False))
    log._writer.stop.wait(3 * plog.DRAIN_INTERVAL_S)  # a drain fails on it...
    log.observe(Outcome(model, "good", 1000, "OK", {"X": x}, {"Y": x}, False))
    log.close()  # ...and the next one still writes
    assert log.dropped_error == 1 and log.rows_written == 1 and log.buffered == 0
    (part,) = (tmp_path / "logs" / "m").rglob("part-*.parquet")
    assert pq.read_table(part).column("request_id").to_pylist() == ["good"]
    assert "writing m's rows failed" in caplog.text


def test_full_buffer_drops_and_metrics(tmp_path):
    log = _log(tmp_path, buffer_size=2)
    model = _model(inputs=(("X", "FP32"),))
    x = np.ones((1, 4), np.float32)
    for i in range(5):  # microseconds apart: the writer drains every 0.2 s, once at most here
        log.observe(Outcome(model, f"r{i}", 1000, "OK", {"X": x}, {"Y": x}, False))
    captured, dropped = log.captured, log.dropped_full
    assert captured + dropped == 5 and dropped >= 1
    registry = CollectorRegistry()
    registry.register(log.collector())
    text = generate_latest(registry).decode()
    assert f'tensorgate_prediction_log_dropped_total{{reason="buffer_full"}} {dropped}.0' in text
    assert f"tensorgate_prediction_log_captured_total {captured}.0" in text
    log.close()
    assert log.rows_written == captured and log.buffered == 0


def test_settings_fields():
    from tensorgate.settings import Settings, _parse_bytes

    assert Settings().prediction_log_dir is None
    assert Settings().prediction_log_sample_ratio == 1.0
    assert _parse_bytes("prediction_log_rotate_bytes", "8M") == 8 << 20
    for bad in ({"prediction_log_sample_ratio": 1.5}, {"prediction_log_buffer_size": 0},
                {"prediction_log_rotate_secs": 0.1}, {"prediction_log_rotate_bytes": 10}):
        with pytest.raises(ValueError):
            Settings(**bad)


def test_a_directory_that_cannot_be_made_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RuntimeError, match="--prediction-log-dir .*Not a directory"):
        plog.PredictionLog(tmp_path / "file" / "logs")
