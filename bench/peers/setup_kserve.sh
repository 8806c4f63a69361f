#!/usr/bin/env bash
# Build KServe's own virtualenv at bench/.venvs/kserve (gitignored).
# KServe 0.21's Python ModelServer (FastAPI/uvicorn for REST, grpc.aio for gRPC) has no
# ONNX runtime of its own in the base package: kserve_server.py wraps onnxruntime in a
# kserve.Model subclass, so onnxruntime is installed beside it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/../.venvs/kserve"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "kserve==0.21.*" "onnxruntime>=1.20,<2" "numpy"
"$venv/bin/python" -c "import kserve, onnxruntime; from importlib.metadata import version; print('kserve', version('kserve'), 'onnxruntime', onnxruntime.__version__)"
