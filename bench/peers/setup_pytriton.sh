#!/usr/bin/env bash
# Build PyTriton's own virtualenv at bench/.venvs/pytriton (gitignored).
# nvidia-pytriton 0.7.0 bundles Triton server 2.51; the model runs through onnxruntime
# in its Python callable, so onnxruntime is installed beside it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/../.venvs/pytriton"
python="${PYTHON:-python3}"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "nvidia-pytriton==0.7.0" "onnxruntime>=1.20,<2" "numpy"
"$venv/bin/python" -c "import pytriton, onnxruntime; from importlib.metadata import version; print('nvidia-pytriton', version('nvidia-pytriton'), 'onnxruntime', onnxruntime.__version__)"
