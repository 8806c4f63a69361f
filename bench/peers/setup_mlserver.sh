#!/usr/bin/env bash
# Build MLServer's own virtualenv at bench/.venvs/mlserver (gitignored).
# Pins from ../../shared/PEERS.md: uvloop 0.23 kills every MLServer worker with
# "There is no current event loop", so uvloop<0.22; onnxruntime for our custom runtime
# (MLServer has no ONNX runtime of its own).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/../.venvs/mlserver"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "mlserver==1.7.1" "uvloop<0.22" "onnxruntime>=1.20,<2" "numpy"
"$venv/bin/python" -c "import mlserver, onnxruntime, uvloop; print('mlserver', mlserver.__version__, 'onnxruntime', onnxruntime.__version__, 'uvloop', uvloop.__version__)"
