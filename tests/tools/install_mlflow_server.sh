#!/usr/bin/env bash
# Installs a real `mlflow server` into its own virtualenv, .tools/mlflow-venv, for the
# model registry tests (tests/e2e/test_registry_mlflow.py).
#
# The full `mlflow` package pins its own versions of packages the server's venv also
# holds (pandas, pyarrow, protobuf ranges, ...), so it lives apart; the server's venv
# only needs the tracking server with a SQLite backend store and a local artifact
# store. TensorGate itself talks to it through `mlflow-skinny` (the `mlflow` and `test`
# extras), the client without the server. Set MLFLOW_SERVER_VERSION to pin a release.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/.tools/mlflow-venv"
spec="mlflow${MLFLOW_SERVER_VERSION:+==$MLFLOW_SERVER_VERSION}"

if [ -x "$venv/bin/mlflow" ] && "$venv/bin/python" -c "import mlflow.server" 2>/dev/null; then
    echo "mlflow server already installed in $venv ($("$venv/bin/mlflow" --version))"
    exit 0
fi
mkdir -p "$root/.tools"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
"$venv/bin/pip" install -q "$spec"
"$venv/bin/python" -c "import mlflow.server"
echo "mlflow server installed in $venv ($("$venv/bin/mlflow" --version))"
