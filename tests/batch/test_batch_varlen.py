"""Variable-length text inputs: rows grouped by similar length, not padded to the longest
row; every row's outputs equal ONNX Runtime on that row alone."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_support import assert_close, oracle, read_output, run_job

from tensorgate.batch.grouping import plan_calls
from tensorgate.batch.mapping import Dense, Plan


def _rows(n=120, seed=3):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, n)
    return [rng.integers(1, 50, int(k)).astype(np.int64) for k in lengths]


@pytest.mark.parametrize("model", ["encoder", "encoder_plain"])
def test_encoder_rows_equal_onnxruntime_alone(varlen_repo, tmp_path, model):
    ids = _rows()
    table = pa.table({
        "doc": [f"d{i}" for i in range(len(ids))],
        "tokens": pa.array([r.tolist() for r in ids], pa.list_(pa.int64())),
        "mask": pa.array([[1] * len(r) for r in ids], pa.list_(pa.int64())),
    })
    pq.write_table(table, tmp_path / "in.parquet")
    out = tmp_path / "out"
    result = run_job(varlen_repo, model, tmp_path / "in.parquet", out, chunk_rows=64,
                     maps=["tokens=input_ids", "mask=attention_mask"])
    assert result.failed == 0
    got = read_output(out)
    assert got.column("doc").to_pylist() == [f"d{i}" for i in range(len(ids))]
    for i, r in enumerate(ids):
        want = oracle(varlen_repo, model, {"input_ids": r[None], "attention_mask": np.ones_like(r)[None]})
        assert_close(np.array(got.column("sentence_embedding")[i].as_py(), np.float32),
                     want["sentence_embedding"][0], rtol=1e-4, atol=1e-5)
        tokens = np.array(got.column("token_embeddings")[i].as_py(), np.float32)
        assert_close(tokens, want["token_embeddings"][0], rtol=1e-4, atol=1e-5)


class _FakeModel:
    def __init__(self, model):
        self.max_batch_size, self.varlen = model.max_batch_size, model.varlen


def test_requests_group_similar_lengths(varlen_repo):
    """The requests a chunk becomes: sorted by length and cut every batch_size rows,
    so padding stays far below padding each batch to the chunk's longest row; without
    the variable-length parameter only equal lengths share a request."""
    import asyncio

    from tensorgate.batch.runner import Job, open_model

    async def plans():
        out = {}
        for name in ("encoder", "encoder_plain"):
            repo, model = await open_model(Job(repository=varlen_repo, model=name, inputs="",
                                               output=varlen_repo))
            out[name] = model
            await repo.unload_all()
        return out
    models = asyncio.run(plans())
    ids = _rows(400, seed=9)
    table = pa.table({"input_ids": pa.array([r.tolist() for r in ids], pa.list_(pa.int64())),
                      "attention_mask": pa.array([[1] * len(r) for r in ids], pa.list_(pa.int64()))})
    for name, model in models.items():
        plan = Plan.build(model.inputs, model.output_names, model.max_batch_size,
                          table.schema, {}, None)
        conv = plan.convert(table)
        assert not any(isinstance(t, Dense) for t in conv.tensors.values())
        calls, rejects = plan_calls(conv, _FakeModel(model), 16)
        assert not rejects
        assert sorted(np.concatenate([c.index for c in calls]).tolist()) == list(range(400))
        real = sum(len(r) for r in ids)
        padded = sum(c.arrays["input_ids"].size for c in calls)
        if name == "encoder":
            assert all(c.rows <= 16 for c in calls) and len(calls) <= 400 // 16 + 1
            assert padded / real < 1.1, padded / real  # similar lengths together
        else:
            assert padded == real  # equal lengths only
            for c in calls:
                assert len({len(ids[i]) for i in c.index}) == 1
