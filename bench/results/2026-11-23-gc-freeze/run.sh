#!/bin/bash
# Alternating pairs: TensorGate with the heap frozen (the default) and not, each in a run
# beside the echo server, tiny MLP at concurrency 64 through perf_analyzer.
#   bash bench/results/2026-11-23-gc-freeze/run.sh [PAIRS]   (from the repository root)
set -e
out=bench/results/2026-11-23-gc-freeze
for i in $(seq 1 "${1:-4}"); do
  for mode in on off; do
    flag=true; [ $mode = off ] && flag=false
    TENSORGATE_ARGS="--gc-freeze $flag" python -m bench compare --scenario tiny_mlp \
      --servers tensorgate,echo --concurrency 64 --driver auto --quiet \
      --output "$out/$mode-$i" > /dev/null
  done
done
python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {"on": [], "off": []}
for d in sorted(out.iterdir()):
    if not d.is_dir():
        continue
    doc = json.loads((d / "results.json").read_text())
    by = {r["server"]: r for r in doc["comparison"] if r.get("status") == "ok"}
    tg, echo = by["tensorgate"], by["echo"]
    rows[d.name.split("-")[0]].append((d.name, tg["inferences_per_s"], tg["p50_us"],
                                       tg["p99_us"], echo["inferences_per_s"]))
lines = ["| run | TG infer/s | TG p50 µs | TG p99 µs | echo infer/s | TG/echo |",
         "| --- | --- | --- | --- | --- | --- |"]
for mode in ("on", "off"):
    for name, ips, p50, p99, eips in rows[mode]:
        lines.append(f"| {name} | {ips:,.0f} | {p50:,.0f} | {p99:,.0f} | {eips:,.0f} | {ips / eips:.2f}x |")
for mode in ("on", "off"):
    r = rows[mode]
    lines.append(f"| median, freeze {mode} | {statistics.median(x[1] for x in r):,.0f} | "
                 f"{statistics.median(x[2] for x in r):,.0f} | {statistics.median(x[3] for x in r):,.0f} | "
                 f"{statistics.median(x[4] for x in r):,.0f} | "
                 f"{statistics.median(x[1] / x[4] for x in r):.2f}x |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
