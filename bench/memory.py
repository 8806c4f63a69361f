"""Resident memory per loaded model version: RSS of a TensorGate server before and after
each model is loaded (and after its first inference, when arenas are allocated).

    python -m bench.memory [--output bench/results/memory.json]

The server starts on an empty repository; each bench model is copied in and loaded with
RepositoryModelLoad, one at a time, so the deltas are not mixed up by parallel loads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models import build_bench_repository
from bench.peers.tensorgate import TensorGatePeer


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _settle(pid: int) -> int:
    time.sleep(0.3)  # let allocator activity from the last call finish
    return rss_bytes(pid)


def measure(models: list[str]) -> list[dict]:
    import tritonclient.grpc as grpcclient

    rows = []
    with tempfile.TemporaryDirectory(prefix="tg-mem-") as tmp:
        source = build_bench_repository(Path(tmp) / "source")
        repo = Path(tmp) / "repo"
        repo.mkdir()
        server = TensorGatePeer()
        reason = server.available()
        if reason:
            raise SystemExit(f"tensorgate not available: {reason}")
        # The peer launcher waits for a model to be ready; an empty repository has
        # none, so start it on a placeholder copy of the first model, then unload it.
        shutil.copytree(source / models[0], repo / models[0])
        address = server.start(repo, models[0])
        try:
            client = grpcclient.InferenceServerClient(address)
            client.unload_model(models[0])
            pid = server.pid()
            for name in models:
                if not (repo / name).exists():
                    shutil.copytree(source / name, repo / name)
                before = _settle(pid)
                t0 = time.monotonic()
                client.load_model(name)
                load_s = time.monotonic() - t0
                loaded = _settle(pid)
                meta = client.get_model_metadata(name)
                inputs = []
                for t in meta.inputs:
                    shape = [1 if d < 0 else d for d in t.shape]
                    inp = grpcclient.InferInput(t.name, shape, t.datatype)
                    inp.set_data_from_numpy(np.zeros(shape, np.float32))
                    inputs.append(inp)
                client.infer(name, inputs)
                served = _settle(pid)
                size = sum(p.stat().st_size for p in (repo / name).rglob("*.onnx"))
                rows.append({
                    "model": name,
                    "onnx_bytes": size,
                    "load_s": round(load_s, 3),
                    "rss_before_mib": round(before / 2**20, 1),
                    "rss_after_load_mib": round(loaded / 2**20, 1),
                    "rss_after_first_infer_mib": round(served / 2**20, 1),
                    "load_delta_mib": round((loaded - before) / 2**20, 1),
                    "total_delta_mib": round((served - before) / 2**20, 1),
                })
            client.close()
        finally:
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny_mlp,convnet")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    rows = measure(args.models.split(","))
    header = "| model | .onnx | load | RSS before | after load | after 1st infer | delta |"
    print(header)
    print("|" + " --- |" * 7)
    for r in rows:
        print(f"| {r['model']} | {r['onnx_bytes'] / 1024:.0f} KiB | {r['load_s'] * 1000:.0f} ms | "
              f"{r['rss_before_mib']} MiB | {r['rss_after_load_mib']} MiB | "
              f"{r['rss_after_first_infer_mib']} MiB | +{r['total_delta_mib']} MiB |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
