#!/bin/bash
# Issue 13's HTTP bench: TensorGate, PyTriton, KServe and MLServer on their v2 HTTP/REST
# front ends (wrk, one JSON body), c=1/16/64, tiny_mlp and convnet; then TensorGate's own
# gRPC c=1 (perf_analyzer) for the HTTP/gRPC p50 ratio. The machine's load before, between
# and after goes to load.txt.
#   bash bench/results/2026-12-06-http-peers/run.sh   (repository root; TENSORGATE_PYTHON
#   chooses the TensorGate build, see README.md)
set -euo pipefail
out=bench/results/2026-12-06-http-peers
py=${PYTHON:-.venv/bin/python}
load() { echo "== $1 $(date -u +%FT%TZ)"; uptime; top -bn1 | sed -n '7,12p'; }
load before > "$out/load.txt"
"$py" -m bench compare --protocol http --scenario tiny_mlp --scenario convnet \
    --servers tensorgate,pytriton,kserve,mlserver --concurrency 1,16,64 \
    --warmup 2 --duration 8 --quiet --output "$out"
load "between" >> "$out/load.txt"
"$py" -m bench compare --protocol grpc --driver perf_analyzer --scenario tiny_mlp \
    --scenario convnet --servers tensorgate --concurrency 1 --warmup 2 --duration 8 --quiet \
    --output "$out/grpc-c1"
load after >> "$out/load.txt"
