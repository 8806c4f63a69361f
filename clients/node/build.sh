#!/usr/bin/env bash
# Install the example's npm dependencies (@grpc/grpc-js, @grpc/proto-loader) exactly as
# package-lock.json pins them, and check the example parses and loads proto/. There is no
# generated code: proto-loader reads ../../proto at run time. A second run with the same
# lock file does nothing. Prints the example's path on the last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
stamp=node_modules/.tensorgate-lock
# npm ci wipes and reinstalls node_modules; skip it while the lock file is unchanged.
if ! cmp -s package-lock.json "$stamp" 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json "$stamp"
fi
node --check simple_mlp_example.js
# Loading the .proto files is where a protocol change would break this client.
node -e "require('@grpc/proto-loader').loadSync('inference/grpc_service.proto', {includeDirs: ['../../proto']})"
echo "$here/simple_mlp_example.js"
