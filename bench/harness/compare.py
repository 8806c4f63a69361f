"""Comparison mode: the same scenario against each server in turn, one table of ratios.

For each scenario (one model each) every server is started on a fresh bench
repository (bench.models), loaded with the scenario, and stopped before the next one
starts, so no two servers share the CPU. Every server gets the same tensors (resolved
once, from the first server that answers). A peer whose available() gives a reason,
or that fails to start, stays in the table with that reason: nothing is silently
skipped. In-process ONNX Runtime is measured directly as the compute ceiling.

Ratios are TensorGate / peer for throughput and for p50 and p99, so they read like the
targets in issue 3 (">= 2x PyTriton" throughput, "p50 <= 1.15x the echo server's").
"""

from __future__ import annotations

import datetime as dt
import tempfile
import traceback
from pathlib import Path

from bench.harness import results
from bench.harness.results import fmt_client, fmt_errors, fmt_num, fmt_us, table
from bench.harness.runner import run_scenario
from bench.harness.scenario import Scenario

INPROCESS = "inprocess"
REFERENCE = "tensorgate"
CEILING_BATCHES = (1, 64)
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def default_out_dir(scenarios: list[Scenario], protocol: str = "grpc") -> Path:
    names = "+".join(s.name for s in scenarios)
    suffix = "" if protocol == "grpc" else f"-{protocol}"
    return RESULTS_DIR / f"{dt.date.today().isoformat()}-{names}{suffix}"


def _peer_classes() -> tuple[dict, str | None]:
    try:
        from bench.peers import PEERS
    except Exception as exc:  # a peer module missing or broken: report, don't crash
        return {}, f"bench.peers does not import: {exc!r}"
    return PEERS, None


def _ceiling(model_file: Path, seconds: float) -> dict:
    from bench.peers.inprocess import measure_inprocess

    measured = measure_inprocess(model_file, CEILING_BATCHES, seconds)
    return {int(b): {"rows_per_s": round(v["rows_per_s"], 1),
                     "us_per_call": round(v["us_per_call"], 1)}
            for b, v in measured.items()}


def _driver_for(peer, driver: str, protocol: str = "grpc") -> str:
    """``auto``: over HTTP, wrk. Over gRPC, Triton's perf_analyzer (C++, a few µs of
    client CPU per request) where the peer answers ModelConfig and the binary is
    installed, else our generator. On a 2-core machine the Python generator's own CPU
    would otherwise set the pace."""
    if driver != "auto":
        return driver
    if protocol == "http":
        return "wrk"
    from bench.harness import perf_analyzer

    if getattr(peer, "supports_perf_analyzer", True) and perf_analyzer.find() is not None:
        return "perf_analyzer"
    return "harness"


def _clip(text: str, head: int = 300, tail: int = 2500) -> str:
    """A start failure's message: its first lines and the end of the server log (where
    the server's own error is), not the start of a long log."""
    if len(text) <= head + tail:
        return text
    return f"{text[:head]}\n[...]\n{text[-tail:]}"


def _run_peer(cls, repo: Path, scenario: Scenario, inputs, progress: bool,
              driver: str = "harness", protocol: str = "grpc") -> dict:
    peer = cls()
    reason = peer.available()
    if reason is None and protocol == "http" and peer.no_http:
        reason = f"no HTTP/REST: {peer.no_http}"
    if reason is not None:
        return results.not_run(peer.name, f"not available: {reason}", scenario.model)
    try:
        url = peer.start(repo, scenario.model)
    except Exception as exc:
        return results.not_run(peer.name, f"failed to start: {_clip(str(exc))}", scenario.model)
    try:
        pids = getattr(peer, "group_pids", None) or (lambda: [peer.pid()])
        if protocol == "http":
            if not peer.http_address:
                return results.not_run(peer.name, "failed: started, but with no HTTP address",
                                       scenario.model)
            from bench.peers.base import read_model_spec

            outputs = tuple(name for name, _, _ in read_model_spec(repo, scenario.model).outputs)
            return run_scenario(peer.http_address, scenario, server=peer.name,
                                control_headers=dict(peer.http_headers), progress=progress,
                                inputs=inputs, server_pids=pids, protocol="http",
                                driver=_driver_for(peer, driver, protocol),
                                expect_outputs=outputs)
        return run_scenario(url, scenario, server=peer.name, headers=dict(peer.grpc_headers),
                            progress=progress, inputs=inputs, server_pids=pids,
                            driver=_driver_for(peer, driver))
    except Exception:
        return results.not_run(peer.name, f"failed: {traceback.format_exc(limit=3)[-2000:]}",
                               scenario.model)
    finally:
        peer.stop()


def compare(scenarios: list[Scenario], servers: list[str], out_dir: Path | None = None, *,
            progress: bool = True, ceiling_seconds: float = 3.0,
            driver: str = "harness", protocol: str = "grpc") -> tuple[dict, dict]:
    """Run, write results.{json,md} and latency.png; (document, paths written).

    ``protocol`` "http": every server is loaded on its v2 HTTP/REST front end with wrk
    (servers without one stay in the table with the reason)."""
    from bench.models import build_bench_repository, model_path

    peers, import_error = _peer_classes()
    runs: list[dict] = []
    ceiling: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo = build_bench_repository(Path(tmp))
        for scenario in scenarios:
            inputs = None  # resolved by the first server that runs, then reused
            for name in servers:
                if name == INPROCESS:
                    try:
                        ceiling[scenario.model] = _ceiling(model_path(repo, scenario.model),
                                                           ceiling_seconds)
                    except Exception as exc:
                        ceiling[scenario.model] = {"status": f"failed: {exc!r}"}
                    continue
                if name not in peers:
                    why = import_error or f"no such peer (known: {sorted(peers)} and {INPROCESS})"
                    runs.append(results.not_run(name, f"not available: {why}", scenario.model))
                    continue
                run = _run_peer(peers[name], repo, scenario, inputs, progress, driver,
                                protocol)
                runs.append(run)
                if inputs is None and run.get("steps"):
                    from bench.harness.payload import InputSpec

                    inputs = [InputSpec(i["name"], i["datatype"], tuple(i["shape"]), i["batched"])
                              for i in run["inputs"]]
    rows = comparison_rows(runs, ceiling)
    doc = results.document(runs, protocol=protocol, ceiling=ceiling, comparison=rows,
                           comparison_markdown=comparison_markdown(rows))
    out_dir = Path(out_dir) if out_dir else default_out_dir(scenarios, protocol)
    title = f"Comparison ({protocol}): " + ", ".join(s.name for s in scenarios)
    return doc, results.write(doc, out_dir, title)


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(f"{numerator / denominator:.3g}")  # 3 digits: ceiling ratios are ~0.001


def comparison_rows(runs: list[dict], ceiling: dict[str, dict]) -> list[dict]:
    """One row per (model, step, server), TensorGate's ratios against each; then the
    in-process ceiling rows per model (its ratio: TensorGate's best step / rows/s)."""
    rows = []
    models = list(dict.fromkeys(r["model"] for r in runs))
    for model in models:
        model_runs = [r for r in runs if r["model"] == model]
        ref = next((r for r in model_runs if r["server"] == REFERENCE and r.get("steps")), None)
        ref_steps = ({s["step"]: s for s in ref["steps"] if not s.get("failed")}
                     if ref else {})
        for run in model_runs:
            if not run.get("steps"):
                rows.append({"model": model, "server": run["server"], "step": None,
                             "status": run["status"]})
                continue
            for step in run["steps"]:
                if step.get("failed"):
                    rows.append({"model": model, "server": run["server"], "step": step["step"],
                                 "status": f"failed: {step['failed']}"})
                    continue
                base = ref_steps.get(step["step"])
                lat = step["latency_us"]
                base_lat = base["latency_us"] if base else {}
                rows.append({
                    "model": model, "server": run["server"], "driver": run.get("driver"),
                    "step": step["step"],
                    "status": "ok", "inferences_per_s": step["inferences_per_s"],
                    "p50_us": lat.get("p50"), "p99_us": lat.get("p99"),
                    "errors": step["errors"], "client": step.get("client"),
                    "server_cpu": step.get("server_cpu"),
                    "tg_over_peer_throughput": _ratio(base and base["inferences_per_s"],
                                                      step["inferences_per_s"]),
                    "tg_over_peer_p50": _ratio(base_lat.get("p50"), lat.get("p50")),
                    "tg_over_peer_p99": _ratio(base_lat.get("p99"), lat.get("p99")),
                })
        best = max((s["inferences_per_s"] for s in ref_steps.values()), default=None)
        for batch, value in sorted((ceiling.get(model) or {}).items(), key=lambda kv: str(kv[0])):
            if not isinstance(value, dict):
                continue
            rows.append({"model": model, "server": f"{INPROCESS} (ORT) b={batch}",
                         "step": f"batch {batch}", "status": "ok",
                         "inferences_per_s": value["rows_per_s"], "p50_us": value["us_per_call"],
                         "p99_us": None, "errors": {}, "client": None, "server_cpu": None,
                         "tg_over_peer_throughput": _ratio(best, value["rows_per_s"]),
                         "tg_over_peer_p50": None, "tg_over_peer_p99": None})
        if isinstance(ceiling.get(model), dict) and "status" in ceiling[model]:
            rows.append({"model": model, "server": INPROCESS, "step": None,
                         "status": ceiling[model]["status"]})
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    def ratio(value) -> str:
        if value is None:
            return "-"
        return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"

    cells = []
    for row in rows:
        if row["status"] != "ok":
            cells.append([row["model"], row["server"], row.get("step") or "-",
                          row["status"].splitlines()[0][:300]] + ["-"] * 8)
            continue
        cpu = row.get("server_cpu") or {}
        server = f"{row['server']} ({row['driver']})" if row.get("driver") else row["server"]
        cells.append([row["model"], server, row["step"], fmt_num(row["inferences_per_s"]),
                      fmt_us(row["p50_us"]), fmt_us(row["p99_us"]),
                      ratio(row["tg_over_peer_throughput"]), ratio(row["tg_over_peer_p50"]),
                      ratio(row["tg_over_peer_p99"]), fmt_errors(row["errors"]),
                      fmt_us(cpu.get("us_per_request")), fmt_client(row["client"] or {})])
    legend = ("TG/peer columns: TensorGate's figure divided by this row's, at the same step "
              "(throughput > 1.00x: TensorGate is faster; p50/p99 < 1.00x: TensorGate answers "
              "sooner). In-process rows: ONNX Runtime called directly at that batch size "
              "(rows/s; p50 column = µs per call); their ratio is TensorGate's best step over "
              "that ceiling. srv CPU/req: the server's CPU per request over the step. "
              "client CPU: cores the load generator used (workers, busiest worker's share).")
    return table(["model", "server", "step", "infer/s", "p50", "p99", "TG/peer infer/s",
                  "TG/peer p50", "TG/peer p99", "errors", "srv CPU/req", "client CPU"],
                 cells) + "\n\n" + legend
