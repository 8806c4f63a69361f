# TensorGate server image. CPU by default; the onnxruntime-gpu wheel it installs uses
# CUDA when the container runs with a GPU and the CUDA 12/13 + cuDNN 9 runtime libraries
# (e.g. built FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 with python3.11 added).
#
#   docker build -t tensorgate .
#   docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v $PWD/models:/models tensorgate \
#       serve --model-repository /models
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# grpc++ (Debian's libgrpc++-dev, found through pkg-config) for the native front end.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ pkg-config libgrpc++-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY proto ./proto
COPY ext ./ext
COPY server ./server
# Builds the Cython extensions and the generated protobuf code into the wheel.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
# The native front end's shared libraries (the runtime half of libgrpc++-dev above).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgrpc++1.51 \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /srv tensorgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER tensorgate
WORKDIR /srv
# Inside a container the server must listen beyond loopback.
ENV TENSORGATE_HOST=0.0.0.0
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python -c "import grpc,sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c=grpc.insecure_channel('127.0.0.1:8001'); \
sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=2).status==1 else 1)"
ENTRYPOINT ["tensorgate"]
CMD ["serve"]
