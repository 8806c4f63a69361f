"""``tensorgate batch --ray`` on a local Ray cluster: the outputs equal the
single-process run's row for row; bad rows go to the errors file on both paths."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_support import cli, errors_of, read_output

pytest.importorskip("ray.data")


def test_ray_equals_the_single_process_run(tmp_path):
    rng = np.random.default_rng(8)
    rows = [rng.standard_normal(16).astype(np.float32).tolist() for _ in range(3000)]
    rows[10] = rows[10][:3]  # a bad row on both paths
    pq.write_table(pa.table({"id": np.arange(3000), "vec": pa.array(rows, pa.list_(pa.float32()))}),
                   tmp_path / "in.parquet", row_group_size=500)
    common = ("--model", "simple_mlp", "--input", str(tmp_path / "in.parquet"), "--map",
              "vec=INPUT0", "--chunk-rows", "512")
    local = cli(*common, "--output", str(tmp_path / "local.parquet"))
    assert local.returncode == 1, local.stderr
    on_ray = cli(*common, "--output", str(tmp_path / "ray.parquet"), "--ray", timeout=240)
    assert on_ray.returncode == 1, on_ray.stderr
    a, b = read_output(tmp_path / "local.parquet"), read_output(tmp_path / "ray.parquet")
    assert a.column_names == b.column_names == ["id", "OUTPUT0"]
    assert b.column("id").to_pylist() == a.column("id").to_pylist()  # order kept
    np.testing.assert_allclose(np.array(b.column("OUTPUT0").to_pylist()),
                               np.array(a.column("OUTPUT0").to_pylist()), rtol=1e-6, atol=1e-6)
    errors = errors_of(tmp_path / "ray.errors.jsonl")
    assert len(errors) == 1 and errors[0]["row"] == {"id": 10}
    assert "3 values" in errors[0]["reason"]
    summary = json.loads((tmp_path / "ray.summary.json").read_text())
    assert (summary["rows_ok"], summary["rows_failed"]) == (2999, 1)


def test_ray_directory_output_reads_as_one_table_in_input_order(tmp_path):
    # Small chunks, many batches: Ray's own write_parquet reordered them inside a file.
    ids = np.arange(4000)
    vecs = np.random.default_rng(9).standard_normal((4000, 16)).astype(np.float32)
    pq.write_table(pa.table({"id": ids, "vec": pa.array(list(vecs), pa.list_(pa.float32()))}),
                   tmp_path / "in.parquet", row_group_size=300)
    out = tmp_path / "scores"
    run = cli("--model", "simple_mlp", "--input", str(tmp_path / "in.parquet"), "--map",
              "vec=INPUT0", "--chunk-rows", "128", "--output", str(out), "--ray", timeout=240)
    assert run.returncode == 0, run.stderr
    parts = sorted(p.name for p in out.glob("*.parquet"))
    assert parts and all(p.startswith("part-") for p in parts), parts  # as a local run's
    table = pq.read_table(out)  # the directory as a dataset: _summary.json is skipped
    assert table.column("id").to_pylist() == ids.tolist()
    summary = json.loads((out / "_summary.json").read_text())
    assert (summary["rows_ok"], summary["rows_failed"]) == (4000, 0)
    # A second run over the same directory is refused without --overwrite, allowed with it.
    again = cli("--model", "simple_mlp", "--input", str(tmp_path / "in.parquet"), "--map",
                "vec=INPUT0", "--output", str(out), "--ray", timeout=240)
    assert again.returncode != 0 and "--overwrite" in again.stderr
