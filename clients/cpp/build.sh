#!/usr/bin/env bash
# Generate the C++ stubs from proto/ and build the example with CMake, into
# clients/cpp/build (or $1). Incremental: a second run only rebuilds what changed.
# Prints the path of the example binary on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/build}"
mkdir -p "$build"
log="$build/build.log"
# Quiet on success, the whole log on failure.
if ! { cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release &&
       cmake --build "$build" --parallel "$(nproc)"; } >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
echo "$build/simple_mlp_example"
