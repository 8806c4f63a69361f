#!/bin/bash
# Streams under abrupt client exits: six perf_analyzer --streaming c=64 runs killed
# (SIGKILL) mid-run, one full run, then the front end must hold nothing and exit 0.
# Run from the repository root after python bench/models.py /tmp/benchrepo; VENV=dir
# picks the build (default .venv).
venv=$(realpath "${VENV:-.venv}")
(cd /tmp; exec "$venv/bin/python" -c "import sys; from tensorgate.cli import main; sys.exit(main())" serve --model-repository /tmp/benchrepo --grpc-port 18771 --metrics-port 18772) > /tmp/stream-stress-stress-srv.log 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q "ready" /tmp/stream-stress-stress-srv.log && break; sleep 0.2; done
echo "RSS start $(ps -o rss= -p $pid)"
for round in 1 2 3 4 5 6; do
  LD_LIBRARY_PATH=.tools/lib timeout -s KILL $((5 + round)) .tools/perf_analyzer -m tiny_mlp -u 127.0.0.1:18771 -i grpc --streaming -p 20000 -s 1000 --max-trials 1 --concurrency-range 64:64 --shape INPUT0:16 > /dev/null 2>&1
  echo "round $round killed rc=$? RSS $(ps -o rss= -p $pid)"
done
LD_LIBRARY_PATH=.tools/lib timeout 60 .tools/perf_analyzer -m tiny_mlp -u 127.0.0.1:18771 -i grpc --streaming -p 5000 -s 1000 --max-trials 3 --concurrency-range 64:64 --shape INPUT0:16 2>&1 | grep -E "Throughput|p99"
sleep 1
curl -s 127.0.0.1:18772/metrics | grep -E "^tensorgate_native_(infer_in_python|infer_waiting|stream_messages_total|infer_shed_total)"
echo "RSS end $(ps -o rss= -p $pid)"
kill -TERM $pid; wait $pid; echo "server rc=$?"
