"""A run killed at random points (SIGKILL) and started again with the same arguments
continues where it stopped; the final output has every input row exactly once."""

from __future__ import annotations

import json
import random
import signal
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_support import DEMO, assert_close, cli, oracle, read_output, start_cli

ROWS = 60_000
CHUNK = "256"  # many small commits, so kills land in every phase of one


@pytest.fixture(scope="module")
def mlp_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "in.parquet"
    x = np.random.default_rng(4).standard_normal((ROWS, 16)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(ROWS),
                             "INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)}),
                   path, row_group_size=10_000)
    return path, oracle(DEMO, "simple_mlp", {"INPUT0": x})["OUTPUT0"]


@pytest.mark.parametrize("output", ["out.parquet", "outdir"])
def test_sigkill_at_random_points_then_resume(tmp_path, mlp_input, output):
    path, want = mlp_input
    out = tmp_path / output
    args = ("--model", "simple_mlp", "--input", str(path), "--output", str(out),
            "--chunk-rows", CHUNK)
    rng = random.Random(f"{output}-{time.time_ns()}")
    manifest = (out.with_name("out.parquet.parts") if output.endswith(".parquet") else out) / "_manifest.json"
    partial = 0  # kills that left some chunks done and some not
    seen = []  # what each killed run left, for the failure message

    def state():
        try:
            return json.loads(manifest.read_text())
        except FileNotFoundError:
            return {"done": {}, "complete": False}
    for i in range(4):
        proc = start_cli(*args)
        if i == 1:  # anywhere, start-up included
            time.sleep(rng.uniform(0.05, 1.5))
        else:  # after this run committed something of its own, at a random point
            before = len(state()["done"])
            deadline = time.monotonic() + 30
            while (proc.poll() is None and len(state()["done"]) <= before
                   and time.monotonic() < deadline):
                time.sleep(0.01)
            # The first run dies soon after its first commit, so at least one kill
            # lands mid-run however fast the machine is; the others anywhere after.
            time.sleep(rng.uniform(0, 0.05) if i == 0 else rng.uniform(0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        now = state()
        partial += bool(now["done"]) and not now["complete"]
        seen.append((proc.returncode, len(now["done"]), now["complete"], err[-300:]))
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    table = read_output(out)
    assert table.column("id").to_pylist() == list(range(ROWS))  # every row, once, in order
    assert_close(np.array(table.column("OUTPUT0").to_pylist(), np.float32), want)
    summary_path = out.with_name("out.summary.json") if output.endswith(".parquet") else out / "_summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["rows"] == ROWS and summary["rows_failed"] == 0
    assert partial, f"no kill landed in the middle of the run: {seen}"
    assert summary["rows_resumed"] > 0 and summary["rows_this_run"] < ROWS
    if output.endswith(".parquet"):
        assert not out.with_name("out.parquet.parts").exists()  # parts merged and removed
    again = cli(*args)  # a finished job started again: nothing to do, same answer
    assert again.returncode == 0, again.stderr
    assert read_output(out).num_rows == ROWS


def test_a_rerun_with_other_arguments_is_refused(tmp_path):
    x = np.zeros((1000, 16), np.float32)
    pq.write_table(pa.table({"id": np.arange(1000),
                             "INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16)}),
                   tmp_path / "in.parquet")
    out = tmp_path / "out"
    args = ["--model", "simple_mlp", "--input", str(tmp_path / "in.parquet"), "--output", str(out)]
    assert cli(*args, "--chunk-rows", "100").returncode == 0
    refused = cli(*args, "--chunk-rows", "200")
    assert refused.returncode == 2 and "chunk_rows" in refused.stderr
    refused = cli(*args, "--chunk-rows", "100", "--passthrough", "")
    assert refused.returncode == 2 and "passthrough" in refused.stderr
    assert cli(*args, "--chunk-rows", "200", "--overwrite").returncode == 0
    assert read_output(out).num_rows == 1000
