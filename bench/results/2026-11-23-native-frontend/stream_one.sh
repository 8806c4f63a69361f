#!/bin/bash
# stream_one.sh LABEL VENV C: starts VENV's tensorgate on /tmp/benchrepo (python
# bench/models.py /tmp/benchrepo), runs perf_analyzer --streaming at concurrency C on
# tiny_mlp, stops the server, prints "LABEL c=C: infer/s p50_us p99_us".
# Run from the repository root (perf_analyzer: bash tests/tools/install_perf_analyzer.sh).
# EXTRA="--frontend grpcio" adds serve flags; OUT=DIR keeps the logs (/tmp/stream-ab).
mkdir -p "${OUT:-/tmp/stream-ab}"
label=$1; venv=$(realpath "$2"); c=$3
log=${OUT:-/tmp/stream-ab}/srv-$label-$c.log
(cd /tmp; exec "$venv/bin/python" -c "import sys; from tensorgate.cli import main; sys.exit(main())" serve --model-repository /tmp/benchrepo --grpc-port 18771 --metrics-port -1 $EXTRA) > $log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q "ready" $log && break; sleep 0.2; done
LD_LIBRARY_PATH=.tools/lib timeout 120 .tools/perf_analyzer -m tiny_mlp -u 127.0.0.1:18771 -i grpc --streaming -p 3000 -s 1000 --max-trials 3 --concurrency-range $c:$c --shape INPUT0:16 > ${OUT:-/tmp/stream-ab}/pa-$label-$c.txt 2>&1
kill -TERM $pid; wait $pid
echo "$label c=$c: $(grep -E 'Throughput|p50 latency|p99 latency' ${OUT:-/tmp/stream-ab}/pa-$label-$c.txt | head -3 | awk '{print $(NF-1)}' | tr '\n' ' ')"
