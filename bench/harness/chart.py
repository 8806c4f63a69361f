"""Latency against throughput, one panel per model, one line pair per server.

Each point is a step (annotated with its load level): throughput on x, latency on y
(log scale, since p99 and p50 differ by orders of magnitude under load). p50 is the
solid line, p99 the dashed one, same colour per server. Agg backend: no display here.
"""

from __future__ import annotations

from pathlib import Path


def _label(run: dict) -> str:
    """One series per server and driver (``bench agree`` plots both drivers)."""
    driver = run.get("driver", "harness")
    return run["server"] + ("" if driver == "harness" else f" ({driver})")


def latency_chart(runs: list[dict], path: Path, title: str = "") -> Path | None:
    """Write the PNG; None when no run has a step with a latency to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r.get("model", "") for r in runs if r.get("steps")})
    if not models:
        return None
    series = list(dict.fromkeys(_label(r) for r in runs if r.get("steps")))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(series)}
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        for run in runs:
            if run.get("model") != model or not run.get("steps"):
                continue
            steps = [s for s in run["steps"] if s["latency_us"].get("p50") is not None]
            steps.sort(key=lambda s: s["inferences_per_s"])
            x = [s["inferences_per_s"] for s in steps]
            label = _label(run)
            colour = colours[label]
            ax.plot(x, [s["latency_us"]["p50"] / 1000 for s in steps], "o-", color=colour,
                    label=f"{label} p50")
            p99 = [(xi, s["latency_us"]["p99"] / 1000) for xi, s in zip(x, steps)
                   if s["latency_us"].get("p99") is not None]
            if p99:
                ax.plot(*zip(*p99), "s--", color=colour, alpha=0.7, label=f"{label} p99")
            for xi, s in zip(x, steps):
                ax.annotate(s["step"], (xi, s["latency_us"]["p50"] / 1000), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
        ax.set_title(model)
        ax.set_xlabel("throughput (inferences/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
