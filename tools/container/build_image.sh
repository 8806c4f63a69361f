#!/usr/bin/env bash
# Builds the TensorGate image from this checkout with podman, as the container test and
# bench/container.py do. Prints the image name on its last line.
#
#   bash tools/container/build_image.sh                    # CPU, localhost/tensorgate:cpu
#   IMAGE=localhost/tensorgate:x bash tools/container/build_image.sh
#   BASE_IMAGE=python:3.11-slim-bookworm bash tools/container/build_image.sh
#   ONNXRUNTIME=onnxruntime-gpu BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#       IMAGE=localhost/tensorgate:cuda bash tools/container/build_image.sh
#
# Without BASE_IMAGE the base is the debootstrap one (build_base.sh, built once per
# machine), because no registry is reachable here. The CA bundle pip trusts on this
# host (PIP_CERT, else the system bundle) goes to the build as the secret pip_cert.
# Build output goes to stderr; podman's layer cache makes a rebuild of an unchanged
# tree take seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
image="${IMAGE:-localhost/tensorgate:cpu}"
base="${BASE_IMAGE:-$(bash "$here/build_base.sh")}"
args=(--format docker --build-arg "BASE_IMAGE=$base" --build-arg "ONNXRUNTIME=${ONNXRUNTIME:-onnxruntime}")
cert="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$cert" ] && args+=(--secret "id=pip_cert,src=$cert")
podman build "${args[@]}" --tag "$image" --file "$root/Dockerfile" "$root" >&2
# Name the build stage as well (all cached: seconds), then drop the untagged images
# earlier builds of this Dockerfile left (each build stage is ~0.9 GB): the next build
# still finds every layer it can reuse.
podman build "${args[@]}" --target build --tag "$image-build" --file "$root/Dockerfile" "$root" >&2
podman image prune --force --filter label=org.opencontainers.image.title=tensorgate >/dev/null
echo "$image"
