#!/bin/bash
# gRPC throughput and p50 of three builds, each beside the echo server in the same repeat
# (so the VM's drift cancels in the TG/echo ratios): the commit before issue 21
# (729a9f9), issue 21's batcher and error work (0529de0) and issue 13's neutral data
# plane (5abfad4). Each build is a clone in its own venv; give their interpreters:
#   BUILDS="before=/p/venv/bin/python i21=/q/.venv/bin/python i13=/r/.venv/bin/python" \
#     bash bench/results/2026-12-06-issue21-issue13/run.sh [REPEATS]   (repository root)
set -e
out=${OUT:-bench/results/2026-12-06-issue21-issue13}
: "${BUILDS:?set BUILDS to label=python pairs}"
mkdir -p "$out"
for i in $(seq 1 "${1:-2}"); do
  for model in tiny_mlp convnet; do
    for build in $BUILDS; do
      label=${build%%=*}
      TENSORGATE_PYTHON=${build#*=} python -m bench compare --scenario $model \
        --servers tensorgate,echo --concurrency 1,64 --duration 5 --driver auto --quiet \
        --output "$out/$label/$model-$i" > /dev/null
    done
  done
done
python - "$out" $BUILDS <<'PY'
import json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
labels = [b.split("=", 1)[0] for b in sys.argv[2:]]
ratios = {}
for label in labels:
    for d in sorted(p for p in (out / label).iterdir() if p.is_dir()):
        doc = json.loads((d / "results.json").read_text())
        for r in doc["comparison"]:
            if r.get("server") == "echo" and r.get("status") == "ok":
                ratios.setdefault((r["model"], r["step"], labels.index(label)), []).append(
                    (r["tg_over_peer_throughput"], r["tg_over_peer_p50"]))
lines = ["| model | step | build | TG/echo infer/s, each run | median | TG/echo p50, each run | median |",
         "| --- | --- | --- | --- | --- | --- | --- |"]
for (model, step, k), rs in sorted(ratios.items()):
    t = [x[0] for x in rs]
    p = [x[1] for x in rs]
    lines.append(f"| {model} | {step} | {labels[k]} | {', '.join(f'{x:.2f}' for x in t)} | "
                 f"{statistics.median(t):.2f}x | {', '.join(f'{x:.2f}' for x in p)} | "
                 f"{statistics.median(p):.2f}x |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
