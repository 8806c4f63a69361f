"""Bad rows go to the errors file with their row id and reason and never stop the run;
a wrong job (mapping, column, model, route) fails at once, naming what is wrong."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_support import DEMO, assert_close, cli, errors_of, oracle, read_output, run_job

from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.routing import store


def _bad_rows_file(tmp_path):
    rng = np.random.default_rng(1)
    rows = [rng.standard_normal(16).astype(np.float32).tolist() for _ in range(40)]
    rows[3] = None  # null
    rows[7] = rows[7][:15]  # wrong length
    rows[8] = rows[8][:15] + [None]  # a null value
    rows[20] = rows[20] + [1.0]  # too long
    pq.write_table(pa.table({"id": np.arange(40), "INPUT0": pa.array(rows, pa.list_(pa.float32()))}),
                   tmp_path / "in.parquet")
    return rows


def test_error_rows_go_to_the_errors_file(tmp_path):
    rows = _bad_rows_file(tmp_path)
    out = tmp_path / "out.parquet"
    done = cli("--model", "simple_mlp", "--input", str(tmp_path / "in.parquet"),
               "--output", str(out), "--chunk-rows", "16")
    assert done.returncode == 1, done.stderr  # finished, with failures
    assert "4 failed" in done.stderr
    errors = errors_of(tmp_path / "out.errors.jsonl")
    assert [e["row_id"] for e in errors] == [3, 7, 8, 20]
    assert "null" in errors[0]["reason"]
    assert "15 values" in errors[1]["reason"] and "takes 16" in errors[1]["reason"]
    assert "null value" in errors[2]["reason"]
    assert "17 values" in errors[3]["reason"]
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert (summary["rows"], summary["rows_ok"], summary["rows_failed"]) == (40, 36, 4)
    again = cli("--model", "simple_mlp", "--input", str(tmp_path / "in.parquet"),
                "--output", str(out), "--chunk-rows", "16")  # finished: nothing to redo
    assert again.returncode == 1 and "4 failed" in again.stderr
    assert errors_of(tmp_path / "out.errors.jsonl") == errors
    table = read_output(out)
    good = [i for i in range(40) if i not in (3, 7, 8, 20)]
    assert table.column("id").to_pylist() == good
    want = oracle(DEMO, "simple_mlp", {"INPUT0": np.array([rows[i] for i in good], np.float32)})
    assert_close(np.array(table.column("OUTPUT0").to_pylist()), want["OUTPUT0"])


def test_values_the_datatype_cannot_hold_and_bad_text(batch_test_repo, tmp_path):
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": 0, "INPUT0": [1, 2, 3]},
        {"id": 1, "INPUT0": [1, 300]},  # not a uint8
        {"id": 2, "INPUT0": [1.5]},  # not an integer
        {"id": 3, "INPUT0": [-1]},  # negative
        {"id": 4, "INPUT0": [255, 0]},
    ]) + "\n")
    out = tmp_path / "out"
    result = run_job(batch_test_repo, "identity_uint8", tmp_path / "in.jsonl", out)
    assert result.failed == 3
    assert [e["row_id"] for e in errors_of(out / "_errors.jsonl")] == [1, 2, 3]
    assert read_output(out).column("OUTPUT0").to_pylist() == [[1, 2, 3], [255, 0]]
    errors = errors_of(out / "_errors.jsonl")
    again = run_job(batch_test_repo, "identity_uint8", tmp_path / "in.jsonl", out)
    assert again.failed == 3 and errors_of(out / "_errors.jsonl") == errors
    assert not (out / "_errors").exists()
    (tmp_path / "in.csv").write_text('id,vec\n0,"[1, 2]"\n1,"[1, oops]"\n2,"3 4 5"\n')
    out2 = tmp_path / "out2"
    result = run_job(batch_test_repo, "identity_int32", tmp_path / "in.csv", out2,
                     maps=["vec=INPUT0"])
    assert result.failed == 1
    assert "not a list of numbers" in errors_of(out2 / "_errors.jsonl")[0]["reason"]
    assert read_output(out2).column("OUTPUT0").to_pylist() == [[1, 2], [3, 4, 5]]


def test_rows_the_runtime_refuses_fail_alone(batch_test_repo, tmp_path):
    """runtime_error (GatherElements) fails in ONNX Runtime on an out-of-range index: only
    that row fails."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    records = []
    for i in range(6):
        idx = [[99], [0]] if i == 4 else [[1], [3]]
        records.append({"id": i, "INPUT0": x.tolist(), "INDICES": idx})
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    result = run_job(batch_test_repo, "runtime_error", tmp_path / "in.jsonl", out)
    assert result.failed == 1
    errors = errors_of(out / "_errors.jsonl")
    assert errors[0]["row_id"] == 4 and "onnxruntime" in errors[0]["reason"]
    assert read_output(out).column("id").to_pylist() == [0, 1, 2, 3, 5]


def test_a_batch_with_one_failing_row_splits_until_it_is_alone(tmp_path):
    """A batching model: the request holding the bad row is split, the others run."""
    from tensorgate.batch.grouping import Call
    from tensorgate.batch.runner import run_calls
    from tensorgate.errors import RuntimeFailure
    import asyncio

    class Model:
        devices = ["cpu"]

        def enter(self, now):
            pass

        def leave(self):
            pass

        async def run(self, arrays, rows, key, now=0.0):
            x = arrays["X"]
            if (x < 0).any():
                raise RuntimeFailure("onnxruntime failed: negative")
            return {"Y": x * 2}

    x = np.arange(8, dtype=np.float32).reshape(8, 1)
    x[5] = -1
    calls = [Call(np.arange(8), {"X": x}, 8)]
    done, outputs, failed = asyncio.run(run_calls(Model(), calls))
    assert failed == [(5, "onnxruntime failed: negative")]
    ok = sorted(int(i) for c, o in zip(done, outputs) if o is not None for i in c.index)
    assert ok == [0, 1, 2, 3, 4, 6, 7]


@pytest.mark.parametrize("args, message", [
    (["--model", "simple_mlp", "--map", "INPUT0=NOPE"], "no input 'NOPE'"),
    (["--model", "simple_mlp", "--map", "missing=INPUT0"], "no column 'missing'"),
    (["--model", "simple_mlp", "--map", "garbage"], "expected COLUMN=INPUT"),
    (["--model", "simple_mlp", "--map", "id=INPUT0", "--passthrough", "nope"], "no column 'nope'"),
    (["--model", "no_such_model"], "unknown model 'no_such_model'"),
    (["--model", "multi_io"], "no column for model input 'FEATURES'"),
    (["--route", "nowhere"], "unknown route 'nowhere'"),
    (["--model", "text_lower"], "no column for model input 'TEXT'"),
])
def test_a_wrong_job_fails_at_once_naming_it(tmp_path, args, message):
    pq.write_table(pa.table({"id": [1, 2], "INPUT0": pa.array([[0.0] * 16] * 2)}),
                   tmp_path / "in.parquet")
    out = tmp_path / "out"
    done = cli(*args, "--input", str(tmp_path / "in.parquet"), "--output", str(out))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()  # nothing was run


def test_missing_input_and_mixed_formats_fail_at_once(tmp_path):
    done = cli("--model", "simple_mlp", "--input", str(tmp_path / "none.parquet"),
               "--output", str(tmp_path / "o"))
    assert done.returncode == 2 and "no such file" in done.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("x\n1\n")
    (tmp_path / "d" / "b.jsonl").write_text('{"x": 1}\n')
    done = cli("--model", "simple_mlp", "--input", str(tmp_path / "d"), "--output", str(tmp_path / "o"))
    assert done.returncode == 2 and "several formats" in done.stderr


def test_route_runs_its_primary_target(tmp_path):
    repo = tmp_path / "repo"
    import shutil

    shutil.copytree(DEMO, repo)
    route = pb.Route(name="mlp", targets=[pb.Target(model="simple_mlp", version="1", weight=100)])
    store.save(store.state_path(repo), [route])
    x = np.random.default_rng(2).standard_normal((10, 16)).astype(np.float32)
    pq.write_table(pa.table({"INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)}),
                   tmp_path / "in.parquet")
    done = cli("--model-repository", str(repo), "--route", "mlp", "--input",
               str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet"))
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert (summary["model"], summary["version"], summary["route"]) == ("simple_mlp", "1", "mlp")
    want = oracle(DEMO, "simple_mlp", {"INPUT0": x})["OUTPUT0"]
    assert_close(np.array(read_output(tmp_path / "out.parquet").column("OUTPUT0").to_pylist()), want)
