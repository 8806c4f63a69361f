"""``tensorgate batch`` against the best in-process ONNX Runtime loops on the same model
and file, Parquet in and out. Not a test: a benchmark (issue #15's targets: at least 0.9x
the ceiling; for variable-length text at least 1.3x a loop that runs rows one by one).

    python -m bench.batch_bench [--convnet-rows 8000] [--text-rows 2000] [--output DIR]

Models: ``convnet`` from bench/models.py (3x64x64 -> 10) and the MiniLM-sized text
encoder of bench/varlen.py (lengths 5..64). Each is served from a repository whose
config.pbtxt is the bench's (max batch 64 / 32, one intra-op thread per instance) with
two CPU instances, so a served version uses both cores (the config's own way to use
them); the batch job runs exactly that.

Every contender reads the same Parquet file and writes a Parquet file with the id
column and the outputs (the job's I/O), timed from the first read to the closed output,
session creation excluded (the job's model load is excluded too: its summary's
``seconds``), each run in a process of its own (as a user runs a job or a script):

- ``tensorgate batch``: the CLI as a user runs it (a subprocess), its summary's rows/s;
- ceiling: the fastest of several in-process ONNX Runtime loops, each reading batches
  with pyarrow and running them on 1 session x 2 intra-op threads or 2 sessions x 1
  thread in two threads, at batch 64 and 256 (text: rows sorted by length within
  chunks and padded per batch, as the job does);
- compute only (for reference): the best loop over arrays already in memory;
- text, one by one: each row alone on one session (ONNX Runtime's default threads: both
  cores), the loop the issue's target names; also two such loops in two threads.

CPU ms per row (every thread of the process, while it processed) is beside each rate:
on a machine shared with other work it moves less than wall time does.

Rounds alternate the contenders (the machine is shared: its load moves), and the best
run of each counts; the load average before and after is printed beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT_CHUNK = 2048  # as the job's default for variable-length inputs


def _two_instances(config: str) -> str:
    return config.replace("count: 1", "count: 2") if "count: 1" in config else config + (
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n")


def build(root: Path, convnet_rows: int, text_rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench import models, varlen

    models.build_bench_repository(root / "repo")
    shutil.rmtree(root / "repo" / "tiny_mlp")
    conf = root / "repo" / "convnet" / "config.pbtxt"
    conf.write_text(_two_instances(conf.read_text()))
    (root / "repo" / "encoder" / "1").mkdir(parents=True)
    (root / "repo" / "encoder" / "1" / "model.onnx").write_bytes(
        varlen.encoder_model().SerializeToString())
    (root / "repo" / "encoder" / "config.pbtxt").write_text(
        _two_instances(varlen.config("encoder", True)))
    rng = np.random.default_rng(20261206)
    x = rng.standard_normal((convnet_rows, 3 * 64 * 64)).astype(np.float32)
    pq.write_table(pa.table({"id": np.arange(convnet_rows),
                             "INPUT0": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)),
                                                                         x.shape[1])}),
                   root / "convnet.parquet", row_group_size=1024)
    lengths = rng.integers(varlen.LENGTHS[0], varlen.LENGTHS[1] + 1, text_rows)
    ids = [rng.integers(1, varlen.VOCAB, int(n)).tolist() for n in lengths]
    pq.write_table(pa.table({"id": np.arange(text_rows),
                             "input_ids": pa.array(ids, pa.list_(pa.int64())),
                             "attention_mask": pa.array([[1] * len(r) for r in ids],
                                                        pa.list_(pa.int64()))}),
                   root / "text.parquet", row_group_size=1024)
    return {"convnet": root / "convnet.parquet", "encoder": root / "text.parquet"}


# -- tensorgate batch ------------------------------------------------------------------


def run_batch(repo: Path, model: str, path: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "tensorgate", "batch", "--model-repository", str(repo),
           "--model", model, "--input", str(path), "--output", str(out), "--progress", "off"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    summary = json.loads((out / "_summary.json").read_text())
    return {"rows_per_s": summary["rows_per_s"], "seconds": summary["seconds"],
            "cpu_ms_per_row": round(1000 * summary["cpu_seconds"] / summary["rows_this_run"], 3),
            "wall_s": round(wall, 2), "batch_size": summary["batch_size"],
            "chunk_rows": summary["chunk_rows"], "instances": summary["instances"]}


# -- in-process ONNX Runtime --------------------------------------------------------------


def _sessions(model_path: Path, sessions: int, threads: int):
    import onnxruntime as ort

    out = []
    for _ in range(sessions):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        out.append(ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"]))
    return out


def _rate(rows: int, started: float, cpu0: float) -> tuple[float, float]:
    """(rows/s, CPU ms per row of every thread of this process) since ``started``."""
    return (rows / (time.perf_counter() - started),
            1000 * (time.process_time() - cpu0) / max(rows, 1))


def _fixed(values: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _pipeline(sessions, batches, run_one, write) -> None:
    """Run ``batches`` on the sessions (one thread each), writing results in order."""
    with ThreadPoolExecutor(len(sessions)) as pool:
        inflight = []
        for i, batch in enumerate(batches):
            inflight.append(pool.submit(run_one, sessions[i % len(sessions)], batch))
            if len(inflight) > 2 * len(sessions):
                write(inflight.pop(0).result())
        for f in inflight:
            write(f.result())


def convnet_loop(model_path: Path, path: Path, out: Path, batch: int, sessions: int,
                 threads: int) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sess = _sessions(model_path, sessions, threads)
    schema = pa.schema([("id", pa.int64()), ("OUTPUT0", pa.list_(pa.float32(), 10))])
    rows = 0
    started, cpu0 = time.perf_counter(), time.process_time()

    def batches():
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch):
            x = rb.column(1).values.to_numpy().reshape(-1, 3, 64, 64)
            yield rb.column(0), x

    def run_one(s, item):
        ids, x = item
        return ids, s.run(["OUTPUT0"], {"INPUT0": x})[0]
    with pq.ParquetWriter(out, schema) as writer:
        def write(result):
            nonlocal rows
            ids, y = result
            writer.write_table(pa.table([ids, _fixed(y)], schema=schema))
            rows += len(y)
        _pipeline(sess, batches(), run_one, write)
    return _rate(rows, started, cpu0)


def _text_batches(ids_col, start: int, batch: int):
    """Rows sorted by length within chunks, cut every ``batch`` rows, padded with 0."""
    lengths = np.array([len(r) for r in ids_col])
    for c in range(0, len(ids_col), TEXT_CHUNK):
        order = c + np.argsort(lengths[c:c + TEXT_CHUNK], kind="stable")
        for s in range(0, len(order), batch):
            index = order[s:s + batch]
            width = int(lengths[index].max())
            ids = np.zeros((len(index), width), np.int64)
            mask = np.zeros((len(index), width), np.int64)
            for j, i in enumerate(index):
                ids[j, :lengths[i]] = ids_col[i]
                mask[j, :lengths[i]] = 1
            yield start + index, ids, mask


def text_loop(model_path: Path, path: Path, out: Path, batch: int, sessions: int,
              threads: int, one_by_one: bool = False) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sess = _sessions(model_path, sessions, threads)
    schema = pa.schema([("id", pa.int64()), ("sentence_embedding", pa.list_(pa.float32(), 384))])
    started, cpu0 = time.perf_counter(), time.process_time()
    pf = pq.ParquetFile(path)

    def batches():
        start = 0
        for rb in pf.iter_batches(batch_size=TEXT_CHUNK, columns=["id", "input_ids"]):
            col = rb.column(1)
            offsets = col.offsets.to_numpy()
            values = col.values.to_numpy()
            rows_ = [values[offsets[i]:offsets[i + 1]] for i in range(len(col))]
            if one_by_one:
                for i, r in enumerate(rows_):
                    yield np.array([start + i]), r[None], np.ones((1, len(r)), np.int64)
            else:
                yield from _text_batches(rows_, start, batch)
            start += len(rows_)

    def run_one(s, item):
        index, ids, mask = item
        return index, s.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
    parts = []
    _pipeline(sess, batches(), run_one, parts.append)
    # Back in input order, as the job writes it.
    index = np.concatenate([p[0] for p in parts])
    emb = np.concatenate([p[1] for p in parts])
    ordered = np.empty_like(emb)
    ordered[index] = emb
    rows = len(index)
    pq.write_table(pa.table([pa.array(np.arange(rows)), _fixed(ordered)], schema=schema), out)
    return _rate(rows, started, cpu0)


def fresh(loop_name: str, *args, **kw) -> tuple[float, float]:
    """Run one loop in a new process, as the job runs (a long-lived process has its
    heap and Arrow's memory pool faulted in already: measured 2-3x fewer CPU ms per row
    on a second run in one process than on a first)."""
    code = ("import json, sys; from pathlib import Path; from bench import batch_bench as b; "
            f"print(json.dumps(b.{loop_name}(*[Path(a) if i < 3 else a for i, a in "
            f"enumerate(json.loads(sys.argv[1]))], **json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([str(a) if isinstance(a, Path)
                                                                  else a for a in args]),
                          json.dumps(kw)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    rate, cpu = json.loads(out.stdout.strip().splitlines()[-1])
    return rate, cpu


def compute_only(model_path: Path, feeds: list, sessions: int, threads: int, names) -> float:
    sess = _sessions(model_path, sessions, threads)
    rows = sum(next(iter(f.values())).shape[0] for f in feeds)
    started = time.perf_counter()
    with ThreadPoolExecutor(sessions) as pool:
        list(pool.map(lambda i: sess[i % sessions].run(names, feeds[i]), range(len(feeds))))
    return rows / (time.perf_counter() - started)


# -- the run --------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--convnet-rows", type=int, default=8000, help="rows of the convnet file (8000)")
    parser.add_argument("--text-rows", type=int, default=2000, help="rows of the text file (2000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best run of each contender counts (3)")
    parser.add_argument("--only", choices=("convnet", "encoder"), default=None,
                        help="run one model's comparison (default: both)")
    parser.add_argument("--output", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tg-batch-bench-"))
    try:
        files = build(work, args.convnet_rows, args.text_rows)
        repo = work / "repo"
        results = {"load_before": os.getloadavg(), "cpus": os.cpu_count()}
        conv_model = repo / "convnet" / "1" / "model.onnx"
        text_model = repo / "encoder" / "1" / "model.onnx"
        table = []
        for name, path, loop, model_path in (
            ("convnet", files["convnet"], convnet_loop, conv_model),
            ("encoder", files["encoder"], text_loop, text_model),
        ):
            if args.only not in (None, name):
                continue
            # Rounds alternate every contender, so a change of the machine's load
            # (shared with other work) falls on all of them; the best of each counts.
            configs = [(b, s, t) for b in ((64, 256) if name == "convnet" else (32, 64))
                       for s, t in ((1, 2), (2, 1))]
            runs, loops, alone = [], {}, {}
            for _ in range(args.repeat):
                runs.append(run_batch(repo, name, path, work / f"out-{name}"))
                print(json.dumps({name: {"tensorgate_batch": runs[-1]}}), flush=True)
                for batch, sessions, threads in configs:
                    key = f"batch {batch}, {sessions} session(s) x {threads} thread(s)"
                    rate, cpu = fresh(loop.__name__, model_path, path, work / "o.parquet",
                                      batch, sessions, threads)
                    loops.setdefault(key, []).append((round(rate, 1), round(cpu, 3)))
                    print(json.dumps({name: {key: loops[key][-1]}}), flush=True)
                if name == "encoder":
                    for sessions, threads in ((1, 2), (2, 1)):
                        key = f"{sessions} session(s) x {threads} thread(s)"
                        rate, cpu = fresh("text_loop", text_model, path, work / "o.parquet", 1,
                                          sessions, threads, one_by_one=True)
                        alone.setdefault(key, []).append((round(rate, 1), round(cpu, 3)))
                        print(json.dumps({name: {f"one by one, {key}": alone[key][-1]}}), flush=True)

            def best(runs_):
                return max(r[0] for r in runs_)

            def cpu_median(runs_):
                return sorted(r[1] for r in runs_)[len(runs_) // 2]
            ours = max(runs, key=lambda r: r["rows_per_s"])
            ceiling_key = max(loops, key=lambda k: best(loops[k]))
            row = {"model": name, "tensorgate_batch": ours["rows_per_s"],
                   "tensorgate_cpu_ms_per_row": sorted(r["cpu_ms_per_row"] for r in runs)[len(runs) // 2],
                   "ceiling": best(loops[ceiling_key]), "ceiling_loop": ceiling_key,
                   "ceiling_cpu_ms_per_row": cpu_median(loops[ceiling_key]),
                   "loops": loops, "batch_runs": runs}
            row["ratio"] = round(row["tensorgate_batch"] / row["ceiling"], 2)
            if name == "convnet":
                x = np.random.default_rng(1).standard_normal((2048, 3, 64, 64)).astype(np.float32)
                feeds = [{"INPUT0": x[s:s + 256]} for s in range(0, 2048, 256)]
                row["compute_only"] = round(max(compute_only(conv_model, feeds, s, t, ["OUTPUT0"])
                                                for s, t in ((1, 2), (2, 1))), 1)
            else:
                # The loop the issue names: one session, rows one by one (ONNX Runtime's
                # default threads: every core); also two such loops in two threads.
                row["one_by_one"] = best(alone["1 session(s) x 2 thread(s)"])
                row["one_by_one_2_threads"] = best(alone["2 session(s) x 1 thread(s)"])
                row["vs_one_by_one"] = round(row["tensorgate_batch"] / row["one_by_one"], 2)
                row["vs_one_by_one_2_threads"] = round(
                    row["tensorgate_batch"] / row["one_by_one_2_threads"], 2)
                row["one_by_one_loops"] = alone
            print(json.dumps(row), flush=True)
            table.append(row)
            print(json.dumps(row), flush=True)
        results["load_after"] = os.getloadavg()
        results["rows"] = table
        md = _markdown(results, args)
        print(md)
        if args.output:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.output / "results.md").write_text(md)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _markdown(results: dict, args) -> str:
    lines = [
        "| model (rows) | tensorgate batch rows/s | ceiling rows/s (its loop) | ratio "
        "| CPU ms/row: batch, ceiling | other |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        n = args.convnet_rows if r["model"] == "convnet" else args.text_rows
        if "compute_only" in r:
            other = f"compute only (arrays in memory): {r['compute_only']:,.0f} rows/s"
        else:
            other = (f"one by one (1 session): {r['one_by_one']:,.0f} rows/s -> "
                     f"{r['vs_one_by_one']}x; one by one in 2 threads: "
                     f"{r['one_by_one_2_threads']:,.0f} -> {r['vs_one_by_one_2_threads']}x")
        lines.append(
            f"| {r['model']} ({n}) | {r['tensorgate_batch']:,.0f} | {r['ceiling']:,.0f} "
            f"({r['ceiling_loop']}) | {r['ratio']}x | {r['tensorgate_cpu_ms_per_row']}, "
            f"{r['ceiling_cpu_ms_per_row']} | {other} |")
    la, lb = results["load_before"], results["load_after"]
    lines.append("")
    lines.append(f"Best of {args.repeat} alternating rounds (CPU: median). Load average before "
                 f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}, after {lb[0]:.2f} {lb[1]:.2f} "
                 f"{lb[2]:.2f} ({results['cpus']} CPUs).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
