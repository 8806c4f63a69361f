#!/bin/bash
# TensorGate beside the echo server, repeated: single runs on this VM move by 10-20%
# (its speed drifts), so the ratio to trust is the median over repeats, each repeat
# measuring both servers back to back.
#   bash bench/results/2026-11-23-tg-vs-echo-repeats/run.sh [REPEATS]   (repository root)
#   OUT=DIR ... writes the runs and summary.md under DIR instead
set -e
out=${OUT:-bench/results/2026-11-23-tg-vs-echo-repeats}
mkdir -p "$out"
for i in $(seq 1 "${1:-4}"); do
  for model in tiny_mlp convnet; do
    python -m bench compare --scenario $model --servers tensorgate,echo --concurrency 1,64 \
      --driver auto --quiet --output "$out/$model-$i" > /dev/null
  done
done
python - "$out" <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
ratios = {}
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    doc = json.loads((d / "results.json").read_text())
    for r in doc["comparison"]:
        if r.get("server") == "echo" and r.get("status") == "ok":
            ratios.setdefault((r["model"], r["step"]), []).append(
                (r["tg_over_peer_throughput"], r["tg_over_peer_p50"]))
lines = ["| model | step | TG/echo infer/s, each run | median | TG/echo p50, each run | median |",
         "| --- | --- | --- | --- | --- | --- |"]
for (model, step), rs in sorted(ratios.items()):
    t = [x[0] for x in rs]
    p = [x[1] for x in rs]
    lines.append(f"| {model} | {step} | {', '.join(f'{x:.2f}' for x in t)} | "
                 f"{statistics.median(t):.2f}x | {', '.join(f'{x:.2f}' for x in p)} | "
                 f"{statistics.median(p):.2f}x |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
