"""Does our generator agree with perf_analyzer? Both drivers, same server, same steps.

Each repeat runs every step with both drivers, alternating which goes first, so a slow
drift of the machine (a background job, thermal) lands on both sides equally. The
report is, per step, the relative difference of our throughput and p50 from
perf_analyzer's, and the margin: the largest absolute difference over the steps.
Expect our p50 to sit above perf_analyzer's by our client's own per-request cost
(Python grpc.aio against C++): that is what the margin states.
"""

from __future__ import annotations

from statistics import mean

from bench.harness import perf_analyzer
from bench.harness.results import fmt_client, fmt_num, fmt_us, table
from bench.harness.runner import resolve, run_scenario
from bench.harness.scenario import Scenario

DRIVERS = ("harness", "perf_analyzer")


def _rel(ours, theirs) -> float | None:
    if ours is None or not theirs:
        return None
    return round((ours - theirs) / theirs * 100, 1)


def agree(url: str, scenario: Scenario, *, repeat: int = 1, progress: bool = True,
          server: str = "server", server_pids=None) -> dict:
    reason = perf_analyzer.unavailable_reason()
    if reason:
        raise perf_analyzer.PerfAnalyzerError(reason)
    specs = resolve(url, scenario, scenario.headers)  # the same tensors for both drivers
    runs = []
    for r in range(repeat):
        order = DRIVERS if r % 2 == 0 else DRIVERS[::-1]
        for driver in order:
            run = run_scenario(url, scenario, server=server, driver=driver, inputs=specs,
                               progress=progress, server_pids=server_pids)
            run["repeat"] = r
            runs.append(run)
    rows = []
    for index, step in enumerate(scenario.steps()):
        side = {d: [run["steps"][index] for run in runs if run["driver"] == d] for d in DRIVERS}

        def avg(driver: str, pick):
            values = [pick(s) for s in side[driver]]
            values = [v for v in values if v is not None]
            return mean(values) if values else None

        ours_t = avg("harness", lambda s: s["inferences_per_s"])
        pa_t = avg("perf_analyzer", lambda s: s["inferences_per_s"])
        ours_p50 = avg("harness", lambda s: s["latency_us"]["p50"])
        pa_p50 = avg("perf_analyzer", lambda s: s["latency_us"]["p50"])
        rows.append({
            "step": step.label,
            "harness_infer_s": ours_t, "perf_analyzer_infer_s": pa_t,
            "throughput_diff_pct": _rel(ours_t, pa_t),
            "harness_p50_us": ours_p50, "perf_analyzer_p50_us": pa_p50,
            "p50_diff_pct": _rel(ours_p50, pa_p50),
            "harness_client": side["harness"][-1]["client"],
            "perf_analyzer_client": side["perf_analyzer"][-1]["client"],
        })
    diffs_t = [abs(r["throughput_diff_pct"]) for r in rows if r["throughput_diff_pct"] is not None]
    diffs_p = [abs(r["p50_diff_pct"]) for r in rows if r["p50_diff_pct"] is not None]
    return {
        "runs": runs,
        "agreement": rows,
        "margin": {"throughput_pct": max(diffs_t, default=None),
                   "p50_pct": max(diffs_p, default=None), "repeats": repeat},
    }


def markdown(result: dict) -> str:
    def pct(value) -> str:
        return "-" if value is None else f"{value:+.1f}%"

    rows = [[r["step"], fmt_num(r["harness_infer_s"]), fmt_num(r["perf_analyzer_infer_s"]),
             pct(r["throughput_diff_pct"]), fmt_us(r["harness_p50_us"]),
             fmt_us(r["perf_analyzer_p50_us"]), pct(r["p50_diff_pct"]),
             fmt_client(r["harness_client"]), fmt_client(r["perf_analyzer_client"])]
            for r in result["agreement"]]
    def within(value) -> str:
        return "n/a" if value is None else f"{value:.1f}%"

    margin = result["margin"]
    summary = (f"Margin over {len(rows)} step(s), {margin['repeats']} repeat(s): throughput "
               f"within {within(margin['throughput_pct'])}, p50 within "
               f"{within(margin['p50_pct'])} of perf_analyzer's (Δ = harness minus "
               "perf_analyzer, relative to perf_analyzer).")
    return table(["step", "harness infer/s", "perf_analyzer infer/s", "Δ infer/s",
                  "harness p50", "perf_analyzer p50", "Δ p50", "harness CPU",
                  "perf_analyzer CPU"], rows) + "\n\n" + summary
