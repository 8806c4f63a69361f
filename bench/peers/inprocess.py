"""The compute ceiling: onnxruntime called in-process, no server, no transport.

    python -m bench.peers.inprocess MODEL.onnx [--batch 1 --batch 64] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(float16)": np.float16, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
          "tensor(bool)": np.bool_}
REPEATS = 5
WARMUP_CALLS = 20


def make_session(model_path: Path, intra_op_threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Same as every server in the comparison: one intra-op thread, sequential graph.
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def random_feeds(session, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every model input; symbolic dimensions become ``batch``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        dtype = _NUMPY[spec.type]
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def _calls_per_second(session, feeds, seconds: float) -> float:
    run, calls = session.run, 0
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        run(None, feeds)
        calls += 1
        now = time.perf_counter()
    return calls / (now - start)


def measure_inprocess(model_path: Path, batch_sizes=(1, 64), seconds: float = 3.0,
                      intra_op_threads: int = 1) -> dict[int, dict[str, float]]:
    """{batch: {"calls_per_s", "rows_per_s", "us_per_call"}}, the median of REPEATS
    runs of seconds/REPEATS each, one batch size after another."""
    session = make_session(Path(model_path), intra_op_threads)
    results = {}
    for batch in batch_sizes:
        feeds = random_feeds(session, batch)
        for _ in range(WARMUP_CALLS):
            session.run(None, feeds)
        rate = statistics.median(
            _calls_per_second(session, feeds, seconds / REPEATS) for _ in range(REPEATS))
        results[batch] = {"calls_per_s": rate, "rows_per_s": rate * batch,
                          "us_per_call": 1e6 / rate}
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, action="append", help="repeatable; default 1 and 64")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    args = parser.parse_args(argv)
    results = measure_inprocess(args.model, tuple(args.batch or (1, 64)), args.seconds)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
