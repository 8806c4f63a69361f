"""Variable-length batching, measured: a BERT-like text encoder, requests of 5 to 64
tokens at concurrency 32, through TensorGate with ``variable_length_batching`` and
without it (same model file, same batching settings otherwise), PyTriton with Triton's
dynamic batcher (the same settings), and in-process ONNX Runtime one request at a time. Not a test: a benchmark (issue #17's target: at least
1.3x the server without variable-length batching on the 2-core reference machine).

    python -m bench.varlen [--duration 10] [--output bench/results/DIR]
    python -m bench.varlen --ceiling     # what batching could gain at most, in process

The encoder is MiniLM-sized (see ``encoder_model``). Inputs input_ids and
attention_mask INT64 [batch, sequence]; output sentence_embedding [batch, HIDDEN].
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# MiniLM-sized (the sentence encoder PEERS.md measured): 6 layers, 384 wide, 12 heads.
VOCAB, HIDDEN, LAYERS, HEADS, FFN = 8000, 384, 6, 12, 1536
LENGTHS = (5, 64)
CONCURRENCY = 32
SEED = 20261206
OPSET, IR_VERSION = 17, 10
MAX_BATCH = 32
DELAY_US = 2000


def encoder_model():
    """A BERT-style encoder: embeddings, LAYERS x (multi-head self-attention with a key
    mask, residual + LayerNorm, GELU feed-forward, residual + LayerNorm), masked mean
    pooling. Random weights (speed, not meaning, is measured)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(SEED)
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inits = []
    head = HIDDEN // HEADS

    def weight(name, *shape, scale=None):
        value = rng.standard_normal(shape).astype(np.float32)
        value *= scale if scale is not None else 1 / np.sqrt(shape[0])
        inits.append(helper.make_tensor(name, f32, list(shape), value.ravel()))
        return name

    def const(name, value, dtype=f32):
        arr = np.asarray(value)
        inits.append(helper.make_tensor(name, dtype, list(arr.shape), arr.ravel().tolist()))
        return name

    n = []
    weight("E", VOCAB, HIDDEN, scale=1.0)
    const("ln_g", np.ones(HIDDEN, np.float32))
    const("ln_b", np.zeros(HIDDEN, np.float32))
    const("axes1", [1], i64)
    const("axes12", [1, 2], i64)
    const("axes2", [2], i64)
    const("neg", -1e4)
    const("one", 1.0)
    const("half", 0.5)
    const("rsqrt2", 1 / np.sqrt(2.0))
    const("scale", 1 / np.sqrt(head))
    const("split_heads", [0, 0, HEADS, head], i64)
    const("merge_heads", [0, 0, HIDDEN], i64)
    n += [helper.make_node("Gather", ["E", "input_ids"], ["e0"]),
          helper.make_node("LayerNormalization", ["e0", "ln_g", "ln_b"], ["x0"], axis=-1),
          # Key mask: 0 for real tokens, -1e4 for padding, as [b, 1, 1, L].
          helper.make_node("Cast", ["attention_mask"], ["maskf"], to=f32),
          helper.make_node("Sub", ["one", "maskf"], ["inv"]),
          helper.make_node("Mul", ["inv", "neg"], ["bias2"]),
          helper.make_node("Unsqueeze", ["bias2", "axes12"], ["bias"])]
    x = "x0"
    for i in range(LAYERS):
        for w in "qkv":
            weight(f"W{w}{i}", HIDDEN, HIDDEN)
            n += [helper.make_node("MatMul", [x, f"W{w}{i}"], [f"{w}{i}"]),
                  helper.make_node("Reshape", [f"{w}{i}", "split_heads"], [f"{w}h{i}"])]
        n += [helper.make_node("Transpose", [f"qh{i}"], [f"qt{i}"], perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", [f"kh{i}"], [f"kt{i}"], perm=[0, 2, 3, 1]),
              helper.make_node("Transpose", [f"vh{i}"], [f"vt{i}"], perm=[0, 2, 1, 3]),
              helper.make_node("MatMul", [f"qt{i}", f"kt{i}"], [f"s{i}"]),
              helper.make_node("Mul", [f"s{i}", "scale"], [f"ss{i}"]),
              helper.make_node("Add", [f"ss{i}", "bias"], [f"sb{i}"]),
              helper.make_node("Softmax", [f"sb{i}"], [f"p{i}"], axis=-1),
              helper.make_node("MatMul", [f"p{i}", f"vt{i}"], [f"c{i}"]),
              helper.make_node("Transpose", [f"c{i}"], [f"ct{i}"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", [f"ct{i}", "merge_heads"], [f"cm{i}"])]
        weight(f"Wo{i}", HIDDEN, HIDDEN)
        weight(f"F1_{i}", HIDDEN, FFN)
        weight(f"F2_{i}", FFN, HIDDEN)
        n += [helper.make_node("MatMul", [f"cm{i}", f"Wo{i}"], [f"o{i}"]),
              helper.make_node("Add", [x, f"o{i}"], [f"r{i}"]),
              helper.make_node("LayerNormalization", [f"r{i}", "ln_g", "ln_b"], [f"n{i}"],
                               axis=-1),
              helper.make_node("MatMul", [f"n{i}", f"F1_{i}"], [f"f{i}"]),
              # GELU: 0.5 x (1 + erf(x / sqrt 2))
              helper.make_node("Mul", [f"f{i}", "rsqrt2"], [f"fs{i}"]),
              helper.make_node("Erf", [f"fs{i}"], [f"fe{i}"]),
              helper.make_node("Add", [f"fe{i}", "one"], [f"fa{i}"]),
              helper.make_node("Mul", [f"f{i}", f"fa{i}"], [f"fm{i}"]),
              helper.make_node("Mul", [f"fm{i}", "half"], [f"g{i}"]),
              helper.make_node("MatMul", [f"g{i}", f"F2_{i}"], [f"h{i}"]),
              helper.make_node("Add", [f"n{i}", f"h{i}"], [f"y{i}"]),
              helper.make_node("LayerNormalization", [f"y{i}", "ln_g", "ln_b"],
                               [f"x{i + 1}"], axis=-1)]
        x = f"x{i + 1}"
    n += [helper.make_node("Unsqueeze", ["maskf", "axes2"], ["mask3"]),
          helper.make_node("Mul", [x, "mask3"], ["masked"]),
          helper.make_node("ReduceSum", ["masked", "axes1"], ["total"], keepdims=0),
          helper.make_node("ReduceSum", ["maskf", "axes1"], ["count"], keepdims=1),
          helper.make_node("Div", ["total", "count"], ["sentence_embedding"])]
    graph = helper.make_graph(
        n, "encoder",
        [helper.make_tensor_value_info("input_ids", i64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", i64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("sentence_embedding", f32, ["batch", HIDDEN])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def config(name: str, varlen: bool, buckets: str = "", threads: int = 1,
           instances: int = 1) -> str:
    text = (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {MAX_BATCH}\n'
        'input { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] }\n'
        'input { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }\n'
        f'output {{ name: "sentence_embedding" data_type: TYPE_FP32 dims: [ {HIDDEN} ] }}\n'
        f"dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} }}\n"
    )
    if instances:  # else the server's default: one instance
        text += f"instance_group {{ count: {instances} kind: KIND_CPU }}\n"
    if threads:  # else ONNX Runtime's default: a thread per physical core
        text += ('parameters { key: "intra_op_thread_count" '
                 f'value: {{ string_value: "{threads}" }} }}\n')
    if varlen:
        text += ('parameters { key: "variable_length_batching" '
                 'value: { string_value: "input_ids:0,attention_mask:0" } }\n')
        if buckets:
            text += ('parameters { key: "variable_length_buckets" '
                     f'value: {{ string_value: "{buckets}" }} }}\n')
    return text


def build_repository(root: Path, buckets: str = "", threads: int = 1,
                     instances: int = 1) -> Path:
    model = encoder_model().SerializeToString()
    for name, varlen in (("encoder_varlen", True), ("encoder_plain", False)):
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "1" / "model.onnx").write_bytes(model)
        (root / name / "config.pbtxt").write_text(
            config(name, varlen, buckets, threads, instances))
    return root


def requests(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED)
    return [rng.integers(1, VOCAB, size=(1, int(n)), dtype=np.int64)
            for n in rng.integers(LENGTHS[0], LENGTHS[1] + 1, size=count)]


def payloads(model: str, ids_list) -> list[bytes]:
    from tensorgate._proto.inference import grpc_service_pb2 as pb

    out = []
    for ids in ids_list:
        req = pb.ModelInferRequest(model_name=model)
        for name in ("input_ids", "attention_mask"):
            req.inputs.add(name=name, datatype="INT64", shape=list(ids.shape))
        req.raw_input_contents.append(ids.tobytes())
        req.raw_input_contents.append(np.ones_like(ids).tobytes())
        req.outputs.add(name="sentence_embedding")
        out.append(req.SerializeToString())
    return out


def inprocess(repo: Path, ids_list, seconds: float) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(repo / "encoder_plain" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ids = ids_list[done % len(ids_list)]
        session.run(["sentence_embedding"], {"input_ids": ids,
                                             "attention_mask": np.ones_like(ids)})
        done += 1
    return {"requests_per_s": done / (time.perf_counter() - start)}


def ceiling(repo: Path, count: int = 400, repeat: int = 3) -> dict:
    """What batching can gain at most on this CPU, in process: ONNX Runtime CPU time
    (``time.thread_time``: one intra-op thread runs on the calling thread, so the figure
    holds on a busy machine) per request over the bench's length draw, one by one
    against batches of B requests of one length (no padding at all), and the ratio with
    the padding the server reported divided out by the caller. Medians of ``repeat``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(repo / "encoder_plain" / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    lengths = rng.integers(LENGTHS[0], LENGTHS[1] + 1, size=count)

    def cpu_per_request(batch: int) -> float:
        runs = len(lengths) // batch
        started = time.thread_time()
        for length in lengths[:runs]:
            ids = rng.integers(1, VOCAB, size=(batch, int(length)), dtype=np.int64)
            session.run(["sentence_embedding"], {"input_ids": ids,
                                                 "attention_mask": np.ones_like(ids)})
        return (time.thread_time() - started) / (runs * batch)

    sizes = (1, 2, 4, 6, 8)
    for b in sizes:  # warm every shape class once
        cpu_per_request(b)
    seen: dict[int, list[float]] = {b: [] for b in sizes}
    for _ in range(repeat):
        for b in sizes:
            seen[b].append(cpu_per_request(b))
    ms = {b: sorted(v)[len(v) // 2] * 1e3 for b, v in seen.items()}
    return {"cpu_ms_per_request": {str(b): round(v, 3) for b, v in ms.items()},
            "gain_without_padding": {str(b): round(ms[1] / v, 2) for b, v in ms.items()}}


def pytriton_rows(repo: Path, ids_list, args) -> list[dict]:
    """The same load against PyTriton serving encoder_plain's file with Triton's dynamic
    batcher (encoder_plain's max batch, queue delay and one intra-op thread; Triton
    batches only requests of one shape, as TensorGate without variable-length batching).
    No rows, with a note, where its virtualenv is missing (bench/peers/setup_pytriton.sh)."""
    from bench.harness.runner import merge_step, worker_specs
    from bench.harness.scenario import Scenario, Step
    from bench.harness.workers import WorkerPool
    from bench.peers.pytriton import PyTritonPeer

    peer = PyTritonPeer()
    missing = peer.available()
    if missing:
        print(json.dumps({"pytriton": f"left out: {missing}"}), flush=True)
        return []
    rows = []
    url = peer.start(repo, "encoder_plain")
    try:
        step = Step(concurrency=CONCURRENCY)
        scenario = Scenario(model="encoder_plain", concurrency=(CONCURRENCY,),
                            warmup_s=args.warmup, duration_s=args.duration)
        with WorkerPool(2) as pool:
            for round_ in range(args.repeat):
                specs = worker_specs(url, step, scenario, payloads("encoder_plain", ids_list),
                                     dict(peer.grpc_headers))
                row = merge_step(step, scenario, pool.run_step(specs), None)
                rows.append({
                    "round": round_, "model": "pytriton",
                    "requests_per_s": round(row["requests_per_s"], 1),
                    "p50_us": row["latency_us"].get("p50"),
                    "p99_us": row["latency_us"].get("p99"), "errors": row["errors"],
                    "mean_batch": None, "padding_overhead": None,
                })
                print(json.dumps(rows[-1]), flush=True)
    finally:
        peer.stop()
    return rows


def padding_invariant(repo: Path) -> float:
    """The largest difference between a request alone and padded in a batch (the
    server checks the same at load)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(repo / "encoder_plain" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    ids = np.arange(1, 8, dtype=np.int64).reshape(1, 7)
    alone = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    padded = np.zeros((2, 20), np.int64)
    padded[0, :7] = ids
    padded[1] = 5
    mask = (padded != 0).astype(np.int64)
    mask[1] = 1
    together = session.run(None, {"input_ids": padded, "attention_mask": mask})[0][:1]
    return float(np.max(np.abs(alone - together)))


def serve(repo: Path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorgate", "serve", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1",
         "--metrics-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = []
    for line in proc.stdout:
        log.append(line)
        match = re.search(r"ready grpc=(\S+) http=\S+ metrics=(\S+)", line)
        if match:
            return proc, match.group(1), match.group(2), log
    raise RuntimeError("server exited:\n" + "".join(log))


def statistics(url: str, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    client.close()
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def padding(metrics_url: str, model: str) -> float | None:
    import urllib.request

    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10).read().decode()
    values = {}
    for kind in ("real", "padded"):
        m = re.search(rf'tensorgate_varlen_{kind}_elements_total{{model="{model}"[^}}]*}} (\S+)',
                      text)
        values[kind] = float(m.group(1)) if m else 0.0
    return values["padded"] / values["real"] - 1 if values["real"] else None


def main(argv=None) -> int:
    from bench.harness.runner import merge_step, worker_specs
    from bench.harness.scenario import Scenario, Step
    from bench.harness.workers import WorkerPool

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up (2)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="alternating runs of each server variant (2)")
    parser.add_argument("--buckets", default="",
                        help="variable_length_buckets (default: the server's, pow2)")
    parser.add_argument("--intra-op-threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads per instance, both servers (1; "
                             "0: not set, ONNX Runtime's default of one per core)")
    parser.add_argument("--instances", type=int, default=1,
                        help="model instances (instance_group count), both servers (1; 0: "
                             "no instance_group, the server's default)")
    parser.add_argument("--output", type=Path, help="write results.json here")
    parser.add_argument("--no-pytriton", action="store_true",
                        help="leave out PyTriton (its dynamic batcher, encoder_plain's settings)")
    parser.add_argument("--ceiling", action="store_true",
                        help="only the in-process ceiling: batches of equal lengths (no "
                             "padding) against one by one, CPU time per request")
    args = parser.parse_args(argv)
    work = Path(__import__("tempfile").mkdtemp(prefix="tg-varlen-"))
    repo = build_repository(work / "repo", args.buckets, args.intra_op_threads, args.instances)
    if args.ceiling:
        result = ceiling(repo)
        print(json.dumps(result), flush=True)
        if args.output:
            args.output.mkdir(parents=True, exist_ok=True)
            (args.output / "ceiling.json").write_text(json.dumps(result, indent=2))
        return 0
    ids_list = requests(256)
    rows = []
    proc, url, metrics_url, _ = serve(repo)
    try:
        step = Step(concurrency=CONCURRENCY)
        with WorkerPool(2) as pool:
            for round_ in range(args.repeat):
                for model in ("encoder_varlen", "encoder_plain"):
                    scenario = Scenario(model=model, concurrency=(CONCURRENCY,),
                                        warmup_s=args.warmup, duration_s=args.duration)
                    before = statistics(url, model)
                    specs = worker_specs(url, step, scenario, payloads(model, ids_list), {})
                    row = merge_step(step, scenario, pool.run_step(specs), None)
                    after = statistics(url, model)
                    inferences, executions = after[0] - before[0], after[1] - before[1]
                    rows.append({
                        "round": round_, "model": model,
                        "requests_per_s": round(row["requests_per_s"], 1),
                        "p50_us": row["latency_us"].get("p50"), "p99_us": row["latency_us"].get("p99"),
                        "errors": row["errors"],
                        "mean_batch": round(inferences / executions, 2) if executions else None,
                        "padding_overhead": padding(metrics_url, model)
                        if model == "encoder_varlen" else None,
                    })
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    if not args.no_pytriton:
        rows += pytriton_rows(repo, ids_list, args)
    alone = inprocess(repo, ids_list, args.duration)
    print(json.dumps({"inprocess_one_by_one": alone}), flush=True)

    def median(model):
        values = sorted(r["requests_per_s"] for r in rows if r["model"] == model)
        return values[len(values) // 2]

    summary = {
        "varlen_rps": median("encoder_varlen"), "plain_rps": median("encoder_plain"),
        "inprocess_rps": round(alone["requests_per_s"], 1),
    }
    summary["varlen_vs_plain"] = round(summary["varlen_rps"] / summary["plain_rps"], 2)
    if any(r["model"] == "pytriton" for r in rows):
        summary["pytriton_rps"] = median("pytriton")
        summary["varlen_vs_pytriton"] = round(summary["varlen_rps"] / summary["pytriton_rps"], 2)
    summary["varlen_vs_inprocess"] = round(summary["varlen_rps"] / summary["inprocess_rps"], 2)
    print(json.dumps(summary), flush=True)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "results.json").write_text(
            json.dumps({"rows": rows, "inprocess": alone, "summary": summary,
                        "model": {"vocab": VOCAB, "hidden": HIDDEN, "layers": LAYERS,
                                  "lengths": LENGTHS, "concurrency": CONCURRENCY,
                                  "max_batch": MAX_BATCH, "delay_us": DELAY_US,
                                  "intra_op_threads": args.intra_op_threads,
                                  "instances": args.instances}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
