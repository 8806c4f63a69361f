"""TensorGate: a KServe v2 / Triton gRPC inference server for ONNX models."""

__version__ = "0.1.0"
