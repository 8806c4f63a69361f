"""Smoke check of every peer: can it run here, does it serve the bench model correctly.

    python -m bench.peers.check [--model tiny_mlp] [--peer NAME ...] [--allow-unavailable]

For each peer: available(); if so, start it on a fresh bench repository, send one
ModelInfer with tritonclient, compare the output with in-process onnxruntime (the echo
server must answer zeros of the output's shape), ask for ModelConfig (perf_analyzer
needs it); where the peer serves HTTP/REST, POST the same tensor as v2 JSON (the body
the HTTP bench sends) and compare that answer too; stop it. Prints a table; exits 1 if
any peer failed (or was unavailable, unless --allow-unavailable).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.models import MODELS, build_bench_repository, model_path
from bench.peers import PEERS, PeerServer
from bench.peers.inprocess import make_session, measure_inprocess

RPC_TIMEOUT_S = 30


def _infer(server: PeerServer, address: str, model: str, data: np.ndarray) -> tuple[np.ndarray, str]:
    import tritonclient.grpc as tc

    spec = MODELS[model]
    client = tc.InferenceServerClient(address)
    try:
        tensor = tc.InferInput(spec.input_name, list(data.shape), spec.datatype)
        tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor], headers=server.grpc_headers,
                              client_timeout=RPC_TIMEOUT_S)
        output = result.as_numpy(spec.output_name)
        try:
            client.get_model_config(model, headers=server.grpc_headers,
                                    client_timeout=RPC_TIMEOUT_S)
            config = "yes"
        except tc.InferenceServerException as exc:
            config = f"no ({exc.status()})"
        return output, config
    finally:
        client.close()


def _infer_http(server: PeerServer, model: str, data: np.ndarray) -> np.ndarray:
    """One v2 JSON infer on the peer's HTTP/REST address; the output as an array."""
    from bench.harness.http_control import HttpControl, infer_answer_problem
    from bench.harness.payload import InputSpec, json_body

    spec = MODELS[model]
    body = json_body([InputSpec(spec.input_name, spec.datatype, data.shape, True)],
                     {spec.input_name: data})
    with HttpControl(server.http_address, server.http_headers) as control:
        status, raw = control.request(f"/v2/models/{model}/infer", body, timeout_s=RPC_TIMEOUT_S)
    text = raw.decode(errors="replace")
    problem = infer_answer_problem(status, text, (spec.output_name,))
    if problem is not None:
        raise RuntimeError(problem)
    (out,) = [o for o in json.loads(text)["outputs"] if o["name"] == spec.output_name]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _expected(repo: Path, model: str, data: np.ndarray) -> np.ndarray:
    return make_session(model_path(repo, model)).run(None, {MODELS[model].input_name: data})[0]


def check_peer(name: str, repo: Path, model: str) -> dict[str, str]:
    row = {"peer": name, "available": "", "start_s": "", "address": "", "output": "",
           "ModelConfig": "", "http": "", "result": ""}
    server = PEERS[name]()
    reason = server.available()
    if reason is not None:
        row.update(available="no", result=f"UNAVAILABLE: {reason}")
        return row
    row["available"] = "yes"
    spec = MODELS[model]
    data = np.random.default_rng(1).standard_normal((1, *spec.input_shape)).astype(np.float32)
    started = time.monotonic()
    try:
        with server:
            address = server.start(repo, model)
            row.update(start_s=f"{time.monotonic() - started:.1f}", address=address)
            output, row["ModelConfig"] = _infer(server, address, model, data)
            http_output = None
            if server.http_address:
                row["address"] += f" http={server.http_address}"
                http_output = _infer_http(server, model, data)
            else:
                row["http"] = "none"
    except Exception as exc:  # report every failure in the table, then go on
        row["result"] = f"FAIL: {str(exc)[:2000]}"
        return row
    row["output"] = f"{output.dtype}{list(output.shape)}"
    want_shape = (1, *spec.output_shape)
    if output.shape != want_shape:
        row["result"] = f"FAIL: shape {output.shape}, want {want_shape}"
        return row
    if name == "echo":
        # The echo answers zeros of the model's output shape (echo_server.py).
        row["result"] = "ok (zeros)" if not output.any() else "FAIL: echo output not zeros"
        return row
    expected = _expected(repo, model, data)
    err = float(np.max(np.abs(output - expected)))
    ok = err <= 1e-5
    if http_output is not None:
        # JSON carries each float as its shortest decimal: exact for float32.
        http_err = (float(np.max(np.abs(http_output - expected)))
                    if http_output.shape == want_shape else float("inf"))
        row["http"] = f"{'ok' if http_err <= 1e-5 else 'FAIL'} (err {http_err:.1e})"
        if http_err > 1e-5:
            row["result"] = f"FAIL: HTTP answer {http_output.ravel()[:4]}... vs onnxruntime"
            return row
    row["result"] = f"{'ok' if ok else 'FAIL'} (max abs err {err:.1e} vs onnxruntime)"
    return row


def _table(rows: list[dict[str, str]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k].splitlines()[0]) if r[k] else 0 for r in rows))
              for k in keys}
    line = lambda cells: "| " + " | ".join(c.ljust(widths[k]) for k, c in zip(keys, cells)) + " |"
    out = [line(keys), "|-" + "-|-".join("-" * widths[k] for k in keys) + "-|"]
    out += [line([(r[k].splitlines() or [""])[0] for k in keys]) for r in rows]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny_mlp")
    parser.add_argument("--peer", action="append", choices=sorted(PEERS),
                        help="repeatable; default: every peer")
    parser.add_argument("--allow-unavailable", action="store_true",
                        help="exit 0 even if a peer can't run here (it is still reported)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo = build_bench_repository(Path(tmp))
        rows = [check_peer(name, repo, args.model) for name in (args.peer or PEERS)]
        rate = measure_inprocess(model_path(repo, args.model), (1,), seconds=0.5)[1]
    rows.append({"peer": "inprocess", "available": "yes", "start_s": "", "address": "",
                 "output": "", "ModelConfig": "", "http": "",
                 "result": f"ok ({rate['us_per_call']:.1f} us/call at batch 1)"})
    print(_table(rows))
    for row in rows:  # full failure messages (with server logs) after the table
        if row["result"].startswith("FAIL") and "\n" in row["result"]:
            print(f"\n--- {row['peer']} ---\n{row['result']}")
    failed = [r for r in rows if r["result"].startswith("FAIL")
              or (r["result"].startswith("UNAVAILABLE") and not args.allow_unavailable)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
