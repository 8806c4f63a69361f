"""Helpers for the batch tests: run a job in-process or the CLI as a subprocess, read
the output, and the oracle (in-process ONNX Runtime on the same model file)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import build_models

from tensorgate.batch.cli import demo_repository
from tensorgate.batch.runner import Job, run

DEMO = demo_repository()
ROOT = Path(__file__).resolve().parents[2]


def run_job(repository: Path, model: str, inputs, output: Path, **kw):
    """A job in-process; the runner's Result."""
    job = Job(repository=Path(repository), model=model, inputs=str(inputs),
              output=Path(output), **kw)
    return asyncio.run(run(job))


def cli(*args: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tensorgate", "batch", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen)


def start_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tensorgate", "batch", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)


def read_output(path: Path) -> pa.Table:
    """A .parquet file, or a directory of part files read as one table."""
    path = Path(path)
    if path.is_dir():
        parts = sorted(path.glob("part-*.parquet"))
        return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({})
    return pq.read_table(path)


def rows_of(column) -> list[np.ndarray]:
    """A (nested) list column as one numpy array per row."""
    return [np.array(v) for v in column.to_pylist()]


def oracle(repository: Path, model: str, feeds: dict, version: int = 1) -> dict:
    """In-process ONNX Runtime on the model file: outputs by name."""
    return build_models.run_onnx(Path(repository) / model / str(version) / "model.onnx", feeds)


def errors_of(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


def assert_close(got, want, rtol=1e-5, atol=1e-6):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    else:
        np.testing.assert_array_equal(got, want)
