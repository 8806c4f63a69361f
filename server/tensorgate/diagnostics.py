"""What this installation has (``tensorgate info``), whether a server answers its
health check (``tensorgate health``, a container's HEALTHCHECK), and the warning a
server without its native front end logs at start."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import os
import platform
import sys
from importlib import resources

from tensorgate import __version__

# The cost of running without grpc++, measured on the 2-core reference machine
# (bench/results/2026-12-06-issue14-frontends/: tiny MLP, perf_analyzer c=64).
NATIVE_MISSING = (
    "the native front end is not in this build: grpc++ (Debian/Ubuntu: libgrpc++-dev "
    "and pkg-config) was missing when TensorGate was installed, so gRPC is served by "
    "grpc.aio at about {ratio} of the native front end's throughput. Fix: run "
    "`bash tools/install_build_deps.sh` (as root, or with sudo), then reinstall "
    "TensorGate (`pip install --force-reinstall --no-deps -e .` in the source tree); "
    "--frontend grpcio chooses grpc.aio on purpose and silences this"
)
NATIVE_MISSING_RATIO = "a third"

# Optional packages a user may have added: (distribution, import name, what it enables).
_EXTRAS = (
    ("tritonclient", "tritonclient", "the official v2 clients (tests, examples)"),
    ("hdrhistogram", "hdrh", "the load harness (python -m bench)"),
    ("rich", "rich", "the load harness' progress display, batch progress"),
    ("pyarrow", "pyarrow", "Parquet: tensorgate batch, prediction logs"),
    ("ray", "ray", "tensorgate batch --ray (Ray Data)"),
    ("redis", "redis", "a response cache shared through Redis"),
    ("mlflow-skinny", "mlflow", "an MLflow registry as a model source"),
    ("onnxconverter-common", "onnxconverter_common", "tensorgate optimize --to fp16"),
    ("onnxruntime-extensions", "onnxruntime_extensions", "tokenizer and string custom ops"),
)
_PACKAGES = ("grpcio", "protobuf", "numpy", "uvloop", "httptools", "orjson",
             "prometheus-client", "opentelemetry-sdk")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _working_providers(ort) -> dict[str, str]:
    """Each execution provider ONNX Runtime lists, and whether a session really gets it
    here (a CUDA build lists CUDA on a machine without a GPU, then falls back)."""
    probe = resources.files("tensorgate") / "demo_repository" / "simple_mlp" / "1" / "model.onnx"
    model = probe.read_bytes()
    result = {}
    ort.set_default_logger_severity(4)  # the fallbacks' errors are the answer, not news
    for provider in ort.get_available_providers():
        options = ort.SessionOptions()
        options.log_severity_level = 4
        try:
            # onnxruntime prints its fallback ("EP Error ...") itself; the state says it.
            with contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                session = ort.InferenceSession(model, options, providers=[provider])
            got = session.get_providers()[0]
            result[provider] = "works" if got == provider else f"falls back to {got}"
        except Exception as exc:  # a provider that cannot even start a session
            result[provider] = f"fails: {str(exc).splitlines()[0][:120]}"
    return result


def installation_report() -> dict:
    from tensorgate.grpc import native

    report: dict = {
        "tensorgate": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": f"{platform.system()} {platform.machine()}",
        "front_ends": {"grpc.aio": _version("grpcio")},
    }
    if native.available():
        from tensorgate._ext.frontend import grpcpp_version

        report["front_ends"]["native (grpc++)"] = grpcpp_version()
    else:
        report["front_ends"]["native (grpc++)"] = None
        report["native_missing"] = NATIVE_MISSING.format(ratio=NATIVE_MISSING_RATIO)
    try:
        import onnxruntime as ort
    except ImportError as exc:
        report["onnxruntime"] = f"missing ({exc})"
    else:
        dist = next((d for d in ("onnxruntime-gpu", "onnxruntime") if _version(d)), "?")
        report["onnxruntime"] = f"{ort.__version__} ({dist})"
        report["execution_providers"] = _working_providers(ort)
    report["packages"] = {name: _version(name) for name in _PACKAGES}
    report["extras"] = {}
    for dist, module, what in _EXTRAS:
        version = _version(dist) or (_version("mlflow") if module == "mlflow" else None)
        if version and importlib.util.find_spec(module):
            report["extras"][dist] = f"{version}: {what}"
    return report


def print_report(report: dict, out=sys.stdout) -> None:
    def line(key: str, value) -> None:
        print(f"{key:<26} {value}", file=out)

    line("tensorgate", report["tensorgate"])
    line("python", f"{report['python']} on {report['platform']}")
    for name, version in report["front_ends"].items():
        line(f"front end {name}", version or "not built")
    if "native_missing" in report:
        print(f"  ! {report['native_missing']}", file=out)
    line("onnxruntime", report["onnxruntime"])
    for provider, state in report.get("execution_providers", {}).items():
        line(f"  {provider}", state)
    for name, version in report["packages"].items():
        line(name, version or "missing")
    if not report["extras"]:
        line("extras", "none")
    for name, what in report["extras"].items():
        line(f"extra {name}", what)


def warn_if_native_missing(settings, log: logging.Logger) -> None:
    """``serve`` with --frontend auto on a build without grpc++: say what it costs and
    how to fix it (--frontend grpcio is a choice, not a gap)."""
    from tensorgate.grpc import native

    if settings.frontend == "auto" and not native.available():
        log.warning(NATIVE_MISSING.format(ratio=NATIVE_MISSING_RATIO))


# -- tensorgate health ------------------------------------------------------------------


def _probe_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _cert_name(pem_path) -> str | None:
    """The first DNS name (else the common name) of a PEM certificate, which the TLS
    check must ask for when connecting to itself by address."""
    import ssl

    try:
        decoded = ssl._ssl._test_decode_cert(str(pem_path))  # stdlib's own PEM reader
    except Exception:
        return None
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS":
            return value
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def check_health(settings, timeout: float = 3.0, service: str = "") -> tuple[bool, str]:
    """(serving, what was seen) from grpc.health.v1 on the server ``settings`` describe:
    its port, and its TLS (trusting its own certificate chain, or TENSORGATE_HEALTH_CA;
    with mutual TLS presenting its own certificate)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if settings.grpc_port == 0:
        return False, "--grpc-port 0 (a free port) cannot be probed: give the port"
    target = f"{_probe_host(settings.host)}:{settings.grpc_port}"
    if settings.tls_cert is not None:
        ca = os.environ.get("TENSORGATE_HEALTH_CA") or settings.tls_cert
        with open(ca, "rb") as f:
            roots = f.read()
        key = chain = None
        if settings.tls_client_ca is not None:
            with open(settings.tls_key, "rb") as f:
                key = f.read()
            with open(settings.tls_cert, "rb") as f:
                chain = f.read()
        options = []
        name = _cert_name(settings.tls_cert)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
        channel = grpc.secure_channel(
            target, grpc.ssl_channel_credentials(roots, key, chain), options=options
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return False, f"{target}: {exc.code().name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target}: {status}"
