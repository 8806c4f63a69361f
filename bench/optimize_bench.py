"""Optimised versions through the server: ``tensorgate optimize`` makes INT8-dynamic and
FP16 versions of two small real models (the 3x64x64 convnet of bench/models.py and the
MiniLM-sized text encoder of bench/varlen.py, 32-token requests), then one server serves
the original and both optimised versions side by side and each is loaded with batch-1
requests at concurrency 64 (the bench harness' workers), one run each, in the same
order for both models. Accuracy is what ``tensorgate optimize`` measured against the
original on the same evaluation rows. Not a test: a benchmark.

    python bench/optimize_bench.py [--duration 8] [--out bench/results/DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CONCURRENCY = 64
TOKENS = 32
METHODS = ("int8-dynamic", "fp16")
ALL_VERSIONS = "version_policy: { all { } }\n"


def load_average() -> float:
    return os.getloadavg()[0]


def build(work: Path) -> tuple[Path, dict[str, Path]]:
    """The repository (convnet and encoder, every version served) and each model's
    evaluation data (.npz, one array per input)."""
    import models as bench_models  # bench/models.py
    import varlen  # bench/varlen.py

    repo = work / "repo"
    bench_models.build_bench_repository(work / "bench")
    (repo / "convnet").mkdir(parents=True)
    os.replace(work / "bench" / "convnet" / "1", repo / "convnet" / "1")
    (repo / "convnet" / "config.pbtxt").write_text(
        bench_models.config_pbtxt(bench_models.MODELS["convnet"]) + ALL_VERSIONS)
    (repo / "encoder" / "1").mkdir(parents=True)
    (repo / "encoder" / "1" / "model.onnx").write_bytes(
        varlen.encoder_model().SerializeToString())
    (repo / "encoder" / "config.pbtxt").write_text(
        varlen.config("encoder", varlen=False) + ALL_VERSIONS)
    rng = np.random.default_rng(20261206)
    data = {"convnet": work / "convnet.npz", "encoder": work / "encoder.npz"}
    np.savez(data["convnet"], INPUT0=rng.random((64, 3, 64, 64)).astype(np.float32))
    ids = rng.integers(1, varlen.VOCAB, size=(64, TOKENS), dtype=np.int64)
    np.savez(data["encoder"], input_ids=ids, attention_mask=np.ones_like(ids))
    return repo, data


def optimize(repo: Path, model: str, method: str, data: Path) -> dict:
    """``tensorgate optimize --json`` as a user runs it; its record."""
    out = subprocess.run(
        [sys.executable, "-m", "tensorgate", "optimize", "--model-repository", str(repo),
         "--model", model, "--version", "1", "--to", method, "--calibration", str(data),
         "--max-error", "1", "--force", "--speed-secs", "3", "--json"],
        capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def payloads(model: str, version: str, data: Path, count: int = 64) -> list[bytes]:
    from tensorgate._proto.inference import grpc_service_pb2 as pb

    datatypes = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    with np.load(data) as arrays:
        inputs = {name: arrays[name] for name in arrays.files}
    out = []
    for i in range(count):
        req = pb.ModelInferRequest(model_name=model, model_version=version)
        for name, array in inputs.items():
            row = np.ascontiguousarray(array[i % len(array)][None])
            req.inputs.add(name=name, datatype=datatypes[row.dtype], shape=list(row.shape))
            req.raw_input_contents.append(row.tobytes())
        out.append(req.SerializeToString())
    return out


def serve(repo: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1",
         "--metrics-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:
        log.append(line)
        match = re.search(r"ready grpc=(\S+) ", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("server exited:\n" + "".join(log))


def main(argv=None) -> int:
    from bench.harness.runner import merge_step, worker_specs
    from bench.harness.scenario import Scenario, Step
    from bench.harness.workers import WorkerPool

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run (8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--out", type=Path, help="write results.json and README.md here")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = load_average()
    work = Path(tempfile.mkdtemp(prefix="tg-optimize-bench-"))
    repo, data = build(work)
    records = {}
    for model in data:
        for version, method in enumerate(METHODS, start=2):
            records[(model, version)] = optimize(repo, model, method, data[model])
            print(json.dumps({"model": model, "version": version, "method": method,
                              "accuracy": records[(model, version)]["accuracy"]}), flush=True)
    rows = []
    proc, url = serve(repo)
    try:
        step = Step(concurrency=CONCURRENCY)
        with WorkerPool(2) as pool:
            for model in data:
                for version in (1, 2, 3):
                    scenario = Scenario(model=model, concurrency=(CONCURRENCY,),
                                        warmup_s=args.warmup, duration_s=args.duration)
                    specs = worker_specs(url, step, scenario,
                                         payloads(model, str(version), data[model]), {})
                    row = merge_step(step, scenario, pool.run_step(specs), None)
                    record = records.get((model, version))
                    rows.append({
                        "model": model, "version": version,
                        "method": record["method"] if record else "original (fp32)",
                        "infer_per_s": round(row["requests_per_s"], 1),
                        "p50_ms": row["latency_us"].get("p50", 0) / 1000,
                        "p99_ms": row["latency_us"].get("p99", 0) / 1000,
                        "errors": row["errors"],
                        "accuracy": record["accuracy"] if record else None,
                        "inprocess_speed": record["speed"]["batches"] if record else None,
                        "bytes": record["result"]["bytes"] if record else
                        records[(model, 2)]["from"]["bytes"],
                    })
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    load_after = load_average()
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["version"] == 1)
        row["vs_original"] = round(row["infer_per_s"] / base["infer_per_s"], 2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({
            "started": started, "load_average_before": load_before,
            "load_average_after": load_after, "concurrency": CONCURRENCY,
            "duration_s": args.duration, "machine": f"{platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}", "rows": rows,
        }, indent=2) + "\n")
        (args.out / "table.md").write_text(table(rows))
    print(table(rows))
    print(f"load average before {load_before:.1f}, after {load_after:.1f}")
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| model | version | infer/s (c=64) | vs original | p50 ms | p99 ms | max abs "
             "diff | mean abs diff | top-1 agree | in-process b1 / b32 vs original | bytes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        a = r["accuracy"]
        speed = " / ".join(f"{s['ratio']:.2f}x" for s in r["inprocess_speed"] or [])
        top1 = a.get("top1_agreement") if a else None
        lines.append(
            f"| {r['model']} | {r['version']} {r['method']} | {r['infer_per_s']:,.0f} | "
            f"{r['vs_original']:.2f}x | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            + (f"{a['max_abs']:.3g} | {a['mean_abs']:.3g} | "
               + (f"{top1 * 100:.1f}%" if top1 is not None else "n/a") if a else "- | - | -")
            + f" | {speed or '-'} | {r['bytes']:,} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
