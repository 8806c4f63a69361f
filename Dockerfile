# TensorGate server image: one Dockerfile, a CPU and a CUDA flavour chosen by build
# arguments (README: "Container image").
#
# CPU (the default; plain onnxruntime, small):
#   docker build -t tensorgate:cpu .
# CUDA (onnxruntime-gpu on NVIDIA's CUDA + cuDNN 9 runtime image; Ubuntu 24.04's python3
# is 3.12, its libgrpc++ 1.51 like bookworm's). onnxruntime-gpu 1.2x wants CUDA 12, the
# newest releases CUDA 13: pair the base with the wheel (onnxruntime.ai's CUDA table).
#   docker build -t tensorgate:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 \
#       --build-arg ONNXRUNTIME=onnxruntime-gpu .
#   docker run --gpus all ... tensorgate:cuda   (`tensorgate info` lists the working providers)
# Run (the server gets SIGTERM and drains for up to --shutdown-grace-secs, 30 s: give the
# runtime a longer stop timeout than Docker's 10 s default):
#   docker run --rm --stop-timeout 35 -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#       -v $PWD/models:/models:ro tensorgate:cpu serve --model-repository /models
#
# BASE_IMAGE: a Debian or Ubuntu image. One without python3 >= 3.11 and its venv module
# (a debootstrap tree, nvidia/cuda) gets the distribution's python3 and python3-venv.
# A pip CA bundle (a TLS-intercepting proxy) can be handed in as a build secret:
#   podman build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt ...
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- python on the base
FROM ${BASE_IMAGE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Every stage carries it: tools/container/build_image.sh prunes the untagged images
# that earlier builds of this Dockerfile left, and nothing else.
LABEL org.opencontainers.image.title=tensorgate
# hadolint ignore=DL3008
RUN if ! python3 -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
    && python3 -c 'import sys; assert sys.version_info >= (3, 11), "need Python 3.11+: " + sys.version'

# ---------------------------------------------------------------- build: venv + wheel
FROM python AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
ARG ONNXRUNTIME=onnxruntime
# Compilers, and grpc++ (found through pkg-config) for the native front end; Python's
# headers where the base has none (Debian's python3 without python3-dev).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ pkg-config libgrpc++-dev \
    && if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
        apt-get install -y --no-install-recommends python3-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
WORKDIR /src
COPY pyproject.toml tools/container/requirements.py ./
# Dependencies first, in layers that only pyproject.toml invalidates. The wheel is
# installed with --no-deps over an explicit list: pyproject's dependencies with
# onnxruntime-gpu replaced by ${ONNXRUNTIME} (requirements.py says why). The build
# requirements go to a venv of their own, so the runtime venv holds no Cython or protoc.
RUN --mount=type=secret,id=pip_cert \
    if [ -f /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/tensorgate \
    && python3 requirements.py pyproject.toml runtime --onnxruntime "${ONNXRUNTIME}" > /tmp/runtime.txt \
    && /opt/tensorgate/bin/pip install --no-cache-dir -r /tmp/runtime.txt \
    && python3 -m venv /opt/build \
    && python3 requirements.py pyproject.toml build > /tmp/build.txt \
    && /opt/build/bin/pip install --no-cache-dir -r /tmp/build.txt
COPY setup.py README.md ./
COPY proto ./proto
COPY ext ./ext
COPY server ./server
# Builds the Cython extensions, the native front end and the generated protobuf code
# into the wheel. setup.py leaves the native front end out with a warning where grpc++
# is missing; here that fails the build instead (the assert). Then the runtime venv is
# sealed: our extensions lose their debug symbols (5 MB; third-party wheels are left
# alone, stripping their patched libraries breaks them), pip and setuptools go (25 MB).
RUN /opt/build/bin/pip wheel --no-cache-dir \
        --no-build-isolation --no-deps --wheel-dir /wheels . \
    && /opt/tensorgate/bin/pip install --no-cache-dir --no-deps /wheels/tensorgate-*.whl \
    && /opt/tensorgate/bin/python -c 'from tensorgate.grpc import native; assert native.available()' \
    && strip --strip-unneeded /opt/tensorgate/lib/python3*/site-packages/tensorgate/_ext/*.so \
    && /opt/tensorgate/bin/pip uninstall -q -y pip setuptools
# The distribution packages whose shared libraries the extensions link (grpc++ and its
# dependencies): the runtime stage installs exactly these, whatever their names on this
# distribution (libgrpc++1.51 on bookworm, libgrpc++1.51t64 on Ubuntu 24.04).
RUN find /opt/tensorgate -path '*/tensorgate/_ext/*.so' -exec ldd {} + \
        | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | xargs -r readlink -f | sort -u \
        | while read -r lib; do dpkg -S "$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null || true; done \
        | cut -d: -f1 | sort -u > /opt/runtime-packages.txt \
    && grep -q grpc /opt/runtime-packages.txt

# ---------------------------------------------------------------- the server image
FROM python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /opt/runtime-packages.txt /opt/runtime-packages.txt
# hadolint ignore=DL3008
RUN apt-get update \
    && xargs -a /opt/runtime-packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/tensorgate /opt/tensorgate
# A numeric user (Kubernetes' runAsNonRoot can check it) owning the state directory:
# routes and rollouts are written there, so the repository can be mounted read-only.
RUN groupadd --system --gid 10001 tensorgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tensorgate \
        --shell /usr/sbin/nologin tensorgate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/tensorgate
USER 10001:10001
WORKDIR /var/lib/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TENSORGATE_HOST=0.0.0.0 \
    TENSORGATE_STATE_DIR=/var/lib/tensorgate
EXPOSE 8000 8001 8002
# SIGTERM starts the drain (README: Security and limits, Shutdown); give the runtime a
# stop timeout above --shutdown-grace-secs (docker/podman run --stop-timeout 35,
# Kubernetes terminationGracePeriodSeconds, deploy/kustomize).
STOPSIGNAL SIGTERM
# `tensorgate health` reads the same TENSORGATE_* settings as `serve` (port, TLS and
# mutual TLS), so a changed port or a TLS secret changes the probe with it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["tensorgate", "health", "--timeout", "3"]
ENTRYPOINT ["tensorgate"]
CMD ["serve"]
