#!/usr/bin/env bash
# Install what clients/cpp, clients/go and clients/node need to build their examples:
# Debian packages (apt-get) and the Node example's npm dependencies (npm ci).
#
# Idempotent and quick when all is there: apt-get (update included) runs only when a
# package is missing. Runs as root, or through sudo -n. On a system without apt-get it
# names what is missing and fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

debian_packages=(
  # C++: stubs from protoc + grpc_cpp_plugin, built with CMake against Debian's gRPC.
  # libgrpc++-dev and pkg-config also build the server's native front end (setup.py).
  g++ make cmake pkg-config protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev
  # Go: protoc plugins and the Go sources of grpc-go and protobuf under /usr/share/gocode,
  # which the build uses offline (GOPATH mode).
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev golang-google-protobuf-dev
  # grpc-go 1.33 (Debian 12) marshals through github.com/golang/protobuf. Its 1.3 line,
  # which apt picks by default, cannot marshal the messages protoc-gen-go 1.28 generates
  # (a nil-pointer panic on the first call); the 1.5 line, a shim over
  # google.golang.org/protobuf, can. Asked for by name, it replaces 1.3.
  golang-github-golang-protobuf-1-5-dev
)

missing=()
for pkg in "${debian_packages[@]}"; do
  status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
# Node may come from anywhere (nodesource, nvm): only its commands matter.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "setup_toolchains: no apt-get here; install the equivalents of: ${missing[*]}" >&2
    exit 1
  fi
  sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "setup_toolchains: run as root (missing: ${missing[*]})" >&2; exit 1; }
    sudo=(sudo -n)
  fi
  echo "setup_toolchains: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm ci from package-lock.json (skipped while the lock file is unchanged).
bash "$here/node/build.sh" >/dev/null
