"""Issue 13's figures from this directory's results: the HTTP table, TensorGate's ratio to
the best Python peer (KServe, MLServer) and to PyTriton, and HTTP c=1 p50 over gRPC's.

    python bench/results/2026-12-06-http-peers/summarize.py   (prints Markdown)
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON_PEERS = ("kserve", "mlserver")
ORDER = ("tensorgate", "pytriton", "kserve", "mlserver")


def steps(doc: dict) -> dict:
    """(model, step, server) -> step row, measured steps only."""
    return {(run["model"], row["step"], run["server"]): row
            for run in doc["runs"] for row in run.get("steps", []) if not row.get("failed")}


def us(value) -> str:
    return "-" if value is None else f"{value:,}"


def main() -> None:
    http = json.loads((HERE / "results.json").read_text())
    grpc = json.loads((HERE / "grpc-c1" / "results.json").read_text())
    rows, grpc_rows = steps(http), steps(grpc)
    models = list(dict.fromkeys(run["model"] for run in http["runs"]))
    labels = list(dict.fromkeys(step for (_, step, _) in rows))
    out = ["| model | step | server | infer/s | p50 µs | p99 µs | errors |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for model in models:
        for step in labels:
            for server in ORDER:
                row = rows.get((model, step, server))
                if row is None:
                    continue
                errors = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "0"
                out.append(f"| {model} | {step} | {server} | {row['inferences_per_s']:,.0f} | "
                           f"{us(row['latency_us']['p50'])} | {us(row['latency_us']['p99'])} | "
                           f"{errors} |")
    out += ["", "| model | step | TensorGate infer/s | best Python peer | TG / it | "
                "PyTriton | TG / PyTriton |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for model in models:
        for step in labels:
            tg = rows.get((model, step, "tensorgate"))
            peers = [(rows[(model, step, p)]["inferences_per_s"], p) for p in PYTHON_PEERS
                     if (model, step, p) in rows]
            pt = rows.get((model, step, "pytriton"))
            if tg is None or not peers:
                continue
            best, name = max(peers)
            tgv = tg["inferences_per_s"]
            pt_cells = (f"{pt['inferences_per_s']:,.0f} | {tgv / pt['inferences_per_s']:.2f}x"
                        if pt else "- | -")
            out.append(f"| {model} | {step} | {tgv:,.0f} | {name} {best:,.0f} | "
                       f"{tgv / best:.2f}x | {pt_cells} |")
    out += ["", "| model | TensorGate HTTP c=1 p50 µs (wrk) | gRPC c=1 p50 µs (perf_analyzer) | "
                "HTTP / gRPC |", "| --- | --- | --- | --- |"]
    for model in models:
        h = rows.get((model, "c=1", "tensorgate"))
        g = grpc_rows.get((model, "c=1", "tensorgate"))
        if h and g:
            hp, gp = h["latency_us"]["p50"], g["latency_us"]["p50"]
            out.append(f"| {model} | {hp:,} | {gp:,} | {hp / gp:.2f}x |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
