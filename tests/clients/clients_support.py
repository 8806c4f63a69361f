"""Helpers for tests/clients: the skip-or-fail rule, the input every example sends, and
``RecordingServer``, a stand-in GRPCInferenceService that records what clients send.

Skip or fail: a missing toolchain (or a missing ``tensorgate_client``) skips its tests,
unless TENSORGATE_REQUIRE_CLIENT_TOOLCHAINS is set (CI sets it to 1), where it fails, so
that CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

REQUIRED = os.environ.get("TENSORGATE_REQUIRE_CLIENT_TOOLCHAINS", "") not in ("", "0")


def unavailable(reason: str) -> None:
    """Skip the calling test, or fail it where CI requires every client to run."""
    if REQUIRED:
        pytest.fail(f"{reason} (TENSORGATE_REQUIRE_CLIENT_TOOLCHAINS is set)", pytrace=False)
    pytest.skip(reason)


def import_client():
    """``tensorgate_client``, or skip/fail the module that needs it."""
    try:
        import tensorgate_client
    except ImportError as exc:
        if REQUIRED:
            raise
        pytest.skip(
            f"tensorgate_client is not installed ({exc}): pip install -e clients/python",
            allow_module_level=True,
        )
    return tensorgate_client


def reference_input() -> np.ndarray:
    """The INPUT0 every example sends to simple_mlp: x[r][c] = (c - 8) * (r + 1) / 8."""
    r, c = np.meshgrid(np.arange(2), np.arange(16), indexing="ij")
    return ((c - 8) * (r + 1) / 8).astype(np.float32)


def make_pki(directory):
    """A CA (ca.pem), a server certificate for localhost and 127.0.0.1 (server.pem,
    server.key) and a client certificate (client.pem, client.key), made with openssl."""
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=tensorgate-test-ca")  # fmt: skip
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ recording server


@dataclass
class Recorded:
    method: str  # "ModelInfer"
    metadata: dict  # invocation metadata, key -> value
    time_remaining: float | None  # the deadline as the server saw it
    request: bytes  # serialized request


def _infer_response() -> bytes:
    """A well-formed answer for the examples: OUTPUT0 FP32 [2, 8] of zeros."""
    from tritonclient.grpc import service_pb2  # an independent copy of the protocol

    response = service_pb2.ModelInferResponse(model_name="simple_mlp", model_version="1")
    response.outputs.add(name="OUTPUT0", datatype="FP32", shape=[2, 8])
    response.raw_output_contents.append(np.zeros((2, 8), np.float32).tobytes())
    return response.SerializeToString()


def _default_answer(method: str, request: bytes, context) -> bytes:
    from tritonclient.grpc import service_pb2

    if method == "ModelInfer":
        return _infer_response()
    if method == "ServerLive":
        return service_pb2.ServerLiveResponse(live=True).SerializeToString()
    context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not recorded")


class RecordingServer:
    """GRPCInferenceService's unary methods on 127.0.0.1, recording each call.

    ``answer(method, request_bytes, context) -> response_bytes`` decides the reply (it
    may sleep or ``context.abort``); by default ModelInfer gets a well-formed simple_mlp
    answer and ServerLive ``live: true``.
    """

    def __init__(self, answer=_default_answer, port: int = 0, credentials=None) -> None:
        self.calls: list[Recorded] = []
        self._lock = threading.Lock()
        self._answer = answer
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((self._Handler(self),))
        address = f"127.0.0.1:{port}"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        self.url = f"127.0.0.1:{self.port}"

    class _Handler(grpc.GenericRpcHandler):
        def __init__(self, owner: RecordingServer) -> None:
            self.owner = owner

        def service(self, details):
            service, _, method = details.method.rpartition("/")
            if service != "/inference.GRPCInferenceService":
                return None
            owner = self.owner

            def handle(request: bytes, context) -> bytes:
                # Capture the deadline first: time_remaining shrinks as we go. No deadline
                # reads as about 2**63 ns here: record None.
                remaining = context.time_remaining()
                if remaining is not None and remaining > 1e9:
                    remaining = None
                with owner._lock:
                    owner.calls.append(
                        Recorded(method, dict(context.invocation_metadata()), remaining, request)
                    )
                return owner._answer(method, request, context)

            return grpc.unary_unary_rpc_method_handler(handle)

    def only_call(self) -> Recorded:
        with self._lock:
            assert len(self.calls) == 1, [c.method for c in self.calls]
            return self.calls[0]

    def __enter__(self) -> RecordingServer:
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=None)


@contextlib.contextmanager
def recording_server_later(port: int, delay: float):
    """A RecordingServer that starts listening on ``port`` ``delay`` seconds from now."""
    holder: dict = {}

    def start() -> None:
        time.sleep(delay)
        holder["server"] = RecordingServer(port=port).__enter__()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    try:
        yield holder
    finally:
        thread.join()
        if "server" in holder:  # absent only if it failed to start: the test says so
            holder["server"].__exit__(None, None, None)
