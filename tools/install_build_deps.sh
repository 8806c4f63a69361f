#!/usr/bin/env bash
# The system packages TensorGate's build needs on Debian/Ubuntu, so that `pip install`
# builds the native gRPC front end (grpc++, found by pkg-config) and the Cython
# extensions (a C/C++ compiler, Python's headers), and `python3 -m venv` works.
# Without grpc++ the install still succeeds but serves gRPC on grpc.aio at about a
# third of the throughput (`tensorgate serve` then says so in a WARNING).
#
# Idempotent and quick when all is there: apt-get runs only for what is missing. Runs
# as root, or through `sudo -n`; otherwise prints the command to run and fails.
set -euo pipefail

packages=(g++ pkg-config libgrpc++-dev)
python=${PYTHON:-python3}
# Python's headers and venv: only where the Python that builds lacks them (a Python
# from pyenv or a container image brings its own).
if ! "$python" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
  packages+=(python3-dev)
fi
if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  packages+=(python3-venv)
fi

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  echo "install_build_deps: all there (${packages[*]})"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install_build_deps: no apt-get here; install the equivalents of: ${missing[*]}" \
       "(grpc++ with its pkg-config file, a C++ compiler, Python headers), or TensorGate" \
       "builds without its native front end" >&2
  exit 1
fi
sudo=()
if ((EUID != 0)); then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
  else
    echo "install_build_deps: not root; run: sudo apt-get update && sudo apt-get install -y" \
         "--no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi
echo "install_build_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
