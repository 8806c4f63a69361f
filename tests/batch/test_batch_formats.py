"""``tensorgate batch`` outputs equal in-process ONNX Runtime on the same model file, for
every input format, with and without --map, on the demo and test models."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import build_models
from batch_support import DEMO, assert_close, oracle, read_output, rows_of, run_job

N = 300
CHUNK = 128  # several chunks, and a last batch shorter than the rest


def _mlp_inputs():
    rng = np.random.default_rng(7)
    return np.arange(N, dtype=np.int64), rng.standard_normal((N, 16)).astype(np.float32)


def _fixed_list(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _mlp_file(tmp_path, form: str):
    """(input path, --map items, whether ids pass through) for simple_mlp."""
    ids, x = _mlp_inputs()
    col = "features" if form.endswith("-map") else "INPUT0"
    maps = [f"{col}=INPUT0"] if col != "INPUT0" else []
    kind = form.removesuffix("-map")
    if kind == "parquet-fixed":
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": ids, col: _fixed_list(x), "note": [f"r{i}" for i in ids]}),
                       path, row_group_size=100)
    elif kind == "parquet-list":
        path = tmp_path / "in.parquet"
        pq.write_table(pa.table({"id": ids, col: pa.array(x.tolist(), pa.list_(pa.float64()))}),
                       path)
    elif kind == "parquet-bytes":
        path = tmp_path / "in.parquet"
        raw = pa.array([r.tobytes() for r in x], pa.binary(64))
        pq.write_table(pa.table({"id": ids, col: raw}), path)
    elif kind == "csv":
        path = tmp_path / "in.csv"
        text = pa.array([json.dumps(r.tolist()) for r in x])
        pcsv.write_csv(pa.table({"id": ids, col: text}), path)
    elif kind == "csv-spaces":
        path = tmp_path / "in.csv"
        text = pa.array([" ".join(repr(float(v)) for v in r) for r in x])
        pcsv.write_csv(pa.table({"id": ids, col: text}), path)
    elif kind == "jsonl":
        path = tmp_path / "in.jsonl"
        _write_jsonl(path, [{"id": int(i), col: r.tolist()} for i, r in zip(ids, x)])
    elif kind == "npy":
        path = tmp_path / "in.npy"
        np.save(path, x)
        return path, ["data=INPUT0"], False
    elif kind == "npy-struct":
        path = tmp_path / "in.npy"
        rec = np.zeros(N, dtype=[("id", np.int64), (col, np.float32, (16,))])
        rec["id"], rec[col] = ids, x
        np.save(path, rec)
    elif kind == "npz":
        path = tmp_path / "in.npz"
        np.savez(path, **{"id": ids, col: x})
    else:
        raise AssertionError(kind)
    return path, maps, True


FORMS = ["parquet-fixed", "parquet-list", "parquet-bytes", "csv", "csv-spaces", "jsonl",
         "npy", "npy-struct", "npz"]


@pytest.mark.parametrize("form", [f for f in FORMS if f != "parquet-bytes"]
                         + [f + "-map" for f in FORMS if f != "npy"])
@pytest.mark.parametrize("single", [True, False], ids=["file", "dir"])
def test_simple_mlp_every_format(tmp_path, form, single):
    path, maps, has_ids = _mlp_file(tmp_path, form)
    out = tmp_path / ("out.parquet" if single else "out")
    result = run_job(DEMO, "simple_mlp", path, out, maps=maps, chunk_rows=CHUNK)
    assert result.failed == 0 and result.summary["rows_ok"] == N
    table = read_output(out)
    ids, x = _mlp_inputs()
    want = oracle(DEMO, "simple_mlp", {"INPUT0": x})["OUTPUT0"]
    assert_close(np.stack(rows_of(table.column("OUTPUT0"))), want)
    assert table.schema.field("OUTPUT0").type.list_size == 8
    if has_ids:
        assert table.column("id").to_pylist() == ids.tolist()
    mapped = "features" if form.endswith("-map") else "INPUT0"
    assert mapped not in table.column_names  # fed to the model, not passed through


def test_multi_io_parquet_and_csv_columns_side_by_side(tmp_path):
    rng = np.random.default_rng(3)
    n = 50
    feats = rng.standard_normal((n, 4)).astype(np.float32)
    counts = rng.integers(-5, 5, (n, 4)).astype(np.int64)
    mask = rng.integers(0, 2, (n, 4)).astype(bool)
    want = oracle(DEMO, "multi_io", {"FEATURES": feats, "COUNTS": counts, "MASK": mask})
    pq.write_table(pa.table({"FEATURES": _fixed_list(feats), "COUNTS": _fixed_list(counts),
                             "MASK": _fixed_list(mask), "key": [f"k{i}" for i in range(n)]}),
                   tmp_path / "in.parquet")
    columns = {f"{p}{j}": a[:, j] for p, a in (("f", feats), ("c", counts), ("m", mask))
               for j in range(4)}
    pcsv.write_csv(pa.table({"key": [f"k{i}" for i in range(n)], **columns}), tmp_path / "in.csv")
    csv_maps = [",".join(f"{p}{j}" for j in range(4)) + f"={name}"
                for p, name in (("f", "FEATURES"), ("c", "COUNTS"), ("m", "MASK"))]
    for src, maps in (("in.parquet", []), ("in.csv", csv_maps)):
        out = tmp_path / f"out-{src}.parquet"
        assert run_job(DEMO, "multi_io", tmp_path / src, out, maps=maps).failed == 0
        table = read_output(out)
        assert table.column_names == ["key", "WEIGHTED", "MASKED_COUNTS", "ANY_MASKED"]
        for name in ("WEIGHTED", "MASKED_COUNTS", "ANY_MASKED"):
            assert_close(np.stack(rows_of(table.column(name))), want[name])
        assert table.column("key").to_pylist() == [f"k{i}" for i in range(n)]


def test_text_lower_strings_non_batching_model(tmp_path):
    texts = [["Hello", "WORLD"], ["MiXeD"], ["a", "B", "cD", "Ef"], ["Ünïcode OK"]]
    _write_jsonl(tmp_path / "in.jsonl", [{"id": i, "TEXT": t} for i, t in enumerate(texts)])
    pq.write_table(pa.table({"id": [0, 1], "line": ["ABC def", "GHI"]}), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert run_job(DEMO, "text_lower", tmp_path / "in.jsonl", out).failed == 0
    table = read_output(out)
    for i, t in enumerate(texts):
        want = oracle(DEMO, "text_lower", {"TEXT": np.array(t, dtype=object)})
        assert [s.encode() for s in table.column("TEXT_LOWER")[i].as_py()] == list(want["TEXT_LOWER"])
        assert table.column("LENGTH")[i].as_py() == list(want["LENGTH"])
    out2 = tmp_path / "out2.parquet"
    assert run_job(DEMO, "text_lower", tmp_path / "in.parquet", out2,
                   maps=["line=TEXT"]).failed == 0
    assert read_output(out2).column("TEXT_LOWER").to_pylist() == [["abc def"], ["ghi"]]


@pytest.mark.parametrize("dtype", build_models.DTYPES, ids=lambda d: d.suffix)
def test_identity_every_dtype_rows_of_different_lengths(batch_test_repo, tmp_path, dtype):
    """identity_* (dims [-1], max batch 8, no variable-length parameter): rows of equal
    length share a request, each row's output is its own."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 6, 40)
    rows = [build_models.sample(dtype, (int(k),), rng) for k in lengths]
    if dtype.suffix == "bytes":
        column = pa.array([[v for v in r] for r in rows], pa.list_(pa.binary()))
    else:
        column = pa.array([r.tolist() for r in rows], pa.list_(pa.from_numpy_dtype(dtype.numpy)))
    pq.write_table(pa.table({"row": np.arange(len(rows)), "INPUT0": column}), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    name = f"identity_{dtype.suffix}"
    assert run_job(batch_test_repo, name, tmp_path / "in.parquet", out, chunk_rows=16).failed == 0
    table = read_output(out)
    assert table.column("row").to_pylist() == list(range(len(rows)))
    for i, r in enumerate(rows):
        want = oracle(batch_test_repo, name, {"INPUT0": r[None]})
        for output in ("OUTPUT0", "OUTPUT1"):
            got = table.column(output)[i].as_py()
            if dtype.suffix == "bytes":
                assert [s.encode() for s in got] == list(want[output][0])
            else:
                assert_close(np.array(got, dtype=dtype.numpy), want[output][0], rtol=0, atol=0)


@pytest.mark.parametrize("model", ["add_sub", "fixed_shape", "classifier", "partial_config"])
def test_test_repository_models(batch_test_repo, tmp_path, model):
    rng = np.random.default_rng(5)
    n = 21
    shapes = {"add_sub": {"INPUT0": (16,), "INPUT1": (16,)}, "fixed_shape": {"INPUT0": (2, 3)},
              "classifier": {"INPUT0": (5,)}, "partial_config": {"INPUT0": (4,)}}[model]
    data = {k: rng.standard_normal((n, *s)).astype(np.float32) for k, s in shapes.items()}
    pq.write_table(pa.table({"id": np.arange(n),
                             **{k: _fixed_list(v.reshape(n, -1)) for k, v in data.items()}}),
                   tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert run_job(batch_test_repo, model, tmp_path / "in.parquet", out).failed == 0
    table = read_output(out)
    if model == "fixed_shape":  # no batching: every row is a request of the whole shape
        wants = [oracle(batch_test_repo, model, {"INPUT0": data["INPUT0"][i]}) for i in range(n)]
        want = {k: np.stack([w[k] for w in wants]) for k in wants[0]}
    else:
        want = oracle(batch_test_repo, model, data)
    for name, value in want.items():
        assert_close(np.stack(rows_of(table.column(name))), value)


def test_several_csv_files_read_with_one_schema(tmp_path):
    """The second file's note column would infer as a number: it is read with the first
    file's types."""
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.csv").write_text('id,note,INPUT0\n1,x,"' + json.dumps([0.5] * 16) + '"\n')
    (d / "b.csv").write_text('id,note,INPUT0\n2,7,"' + json.dumps([1.5] * 16) + '"\n')
    out = tmp_path / "out.parquet"
    assert run_job(DEMO, "simple_mlp", d, out).failed == 0
    table = read_output(out)
    assert table.column("id").to_pylist() == [1, 2] and table.column("note").to_pylist() == ["x", "7"]


def test_pipeline_runs_its_steps(tmp_path, tmp_path_factory):
    repo = build_models.build_pipeline_repository(tmp_path_factory.mktemp("batch_pipelines"))
    x = np.random.default_rng(6).standard_normal((20, 4)).astype(np.float32)
    pq.write_table(pa.table({"X": _fixed_list(x)}), tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    assert run_job(repo, "fan_out", tmp_path / "in.parquet", out).failed == 0
    table = read_output(out)
    assert_close(np.stack(rows_of(table.column("A"))), x * 2)
    assert_close(np.stack(rows_of(table.column("B"))), x + 1)
