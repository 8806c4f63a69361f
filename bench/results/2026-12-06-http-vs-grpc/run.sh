#!/bin/bash
# HTTP/REST (binary tensors, as tritonclient.http and perf_analyzer send them) against
# gRPC on the same TensorGate server, tiny MLP (simple_mlp), perf_analyzer driving both,
# alternating protocols so the VM's drift hits both alike.
#   bash bench/results/2026-12-06-http-vs-grpc/run.sh [REPEATS]   (repository root, venv on PATH)
set -e
out=${OUT:-bench/results/2026-12-06-http-vs-grpc}
mkdir -p "$out"
log=$(mktemp)
python -m tensorgate serve --grpc-port 0 --http-port 0 --metrics-port -1 > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "ready grpc=" "$log" && break; sleep 0.2; done
grpc=$(sed -n 's/.*ready grpc=\([0-9.:]*\) http=\([0-9.:]*\) .*/\1/p' "$log")
http=$(sed -n 's/.*ready grpc=\([0-9.:]*\) http=\([0-9.:]*\) .*/\2/p' "$log")
export LD_LIBRARY_PATH=$PWD/.tools/lib
for i in $(seq 1 "${1:-2}"); do
  for c in 1 64; do
    for proto in grpc http; do
      url=$([ $proto = grpc ] && echo $grpc || echo $http)
      .tools/perf_analyzer -m simple_mlp -i $proto -u $url -b 1 --async \
        --concurrency-range $c:$c -p 3000 -s 1000 --max-trials 5 \
        -f "$out/$proto-c$c-$i.csv" > /dev/null
    done
  done
done
python - "$out" <<'PY'
import csv, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {}
for f in sorted(out.glob("*.csv")):
    proto, c, _ = f.stem.split("-")
    r = next(csv.DictReader(f.open()))
    rows.setdefault((c, proto), []).append((float(r["Inferences/Second"]), int(r["p50 latency"])))
lines = ["| step | protocol | infer/s, each run | median | p50 µs, each run | median |",
         "| --- | --- | --- | --- | --- | --- |"]
for (c, proto), rs in sorted(rows.items(), key=lambda kv: (int(kv[0][0][1:]), kv[0][1])):
    t = [x[0] for x in rs]; p = [x[1] for x in rs]
    lines.append(f"| {c} | {proto} | {', '.join(f'{x:.0f}' for x in t)} | {statistics.median(t):.0f} | "
                 f"{', '.join(str(x) for x in p)} | {statistics.median(p):.0f} |")
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
