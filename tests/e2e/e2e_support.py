"""Helpers for the end-to-end tests: the real ``tensorgate serve`` as a subprocess.

``start_server(repo, *extra_args)`` is a context manager that starts
``python -m tensorgate serve --model-repository REPO --host 127.0.0.1 --grpc-port 0
--metrics-port 0 ...``, waits for the ready line the server logs (DESIGN.md: port 0
picks a free port and the ready line names it) and always stops the process by its PID.
The fixtures built on it live in conftest.py. (A module of its own, not conftest, so
test modules can import it by a name no other test directory uses.)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
DEMO_REPOSITORY = REPO_ROOT / "server" / "tensorgate" / "demo_repository"

sys.path.insert(0, str(TESTS_DIR / "models"))
import build_models  # noqa: E402, F401  (tests/models is not a package; re-exported)

READY_RE = re.compile(
    r"ready grpc=([\d.]+):(\d+) http=(?:([\d.]+):(\d+)|off) metrics=([\d.]+):(\d+)"
)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class ServerProcess:
    """A running ``tensorgate serve``; ``log`` is everything it printed so far."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.grpc_url = ""  # "127.0.0.1:<port>"
        self.metrics_url = ""  # "http://127.0.0.1:<port>"
        self.http_url = ""  # "127.0.0.1:<port>" (tritonclient.http's form); "" when off
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port = 0
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._eof = threading.Event()
        self._reader = threading.Thread(target=self._drain, name="tensorgate-log", daemon=True)
        self._reader.start()

    @property
    def log(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def _drain(self) -> None:
        # Keep reading until EOF so the pipe never fills and blocks the server.
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            with self._lock:
                self._lines.append(line)
            if not self._ready.is_set():
                match = READY_RE.search(line)
                if match:
                    self.grpc_port = int(match.group(2))
                    self.metrics_port = int(match.group(6))
                    self.grpc_url = f"{match.group(1)}:{match.group(2)}"
                    self.metrics_url = f"http://{match.group(5)}:{match.group(6)}"
                    if match.group(4):
                        self.http_port = int(match.group(4))
                        self.http_url = f"{match.group(3)}:{match.group(4)}"
                    self._ready.set()
        self._eof.set()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The log once it holds ``text`` (the server's output reaches us through a
        pipe and a reader thread, a little after the call that caused it returned)."""
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the server log:\n{self.log}")
            time.sleep(0.02)
        return self.log

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self._eof.is_set() or self.proc.poll() is not None:
                self._eof.wait(2.0)
                raise RuntimeError(
                    f"tensorgate exited with code {self.proc.poll()} before it was ready; "
                    f"log:\n{self.log}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"tensorgate not ready after {timeout:.0f} s; log:\n{self.log}")
            self._ready.wait(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM by PID, SIGKILL if still alive after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._eof.wait(2.0)
        return self.proc.returncode


def model_subset(test_repo: Path, root: Path, names=("identity_fp32", "identity_bytes")) -> Path:
    """A repository at ``root`` with a few of the test repository's models, so a module
    that starts servers of its own starts them fast."""
    for name in names:
        shutil.copytree(test_repo / name, root / name)
    return root


def server_env(**overrides: str) -> dict:
    """The environment for a server: ours, minus any TENSORGATE_* the developer set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORGATE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@contextlib.contextmanager
def start_server(
    repo: Path | None,
    *extra_args: str,
    env: dict | None = None,
    command: list[str] | None = None,
    default_ports: bool = True,
):
    """Run ``tensorgate serve`` until the with-block ends.

    ``repo=None`` leaves out ``--model-repository`` (the bundled demo repository, or
    whatever ``env`` names). ``default_ports=False`` leaves out --host/--grpc-port/
    --metrics-port so the environment can set them. ``command`` replaces
    ``python -m tensorgate``.
    """
    args = list(command or [sys.executable, "-m", "tensorgate"]) + ["serve"]
    if repo is not None:
        args += ["--model-repository", str(repo)]
    if default_ports:
        args += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0",
                 "--metrics-port", "0"]
    args += list(extra_args)
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=env if env is not None else server_env(),
    )
    server = ServerProcess(proc)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- helpers


def status_of(exc) -> str:
    """``"NOT_FOUND"`` from a tritonclient InferenceServerException or a grpc.RpcError."""
    if hasattr(exc, "code") and callable(exc.code):
        return exc.code().name
    status = exc.status() or ""
    return status.rsplit(".", 1)[-1]


def message_of(exc) -> str:
    if hasattr(exc, "details") and callable(exc.details):
        return exc.details() or ""
    return exc.message() or ""


def infer_input(name: str, array: np.ndarray, datatype: str | None = None):
    """A tritonclient InferInput carrying ``array`` as raw contents."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    dt = datatype or np_to_triton_dtype(array.dtype)
    inp = grpcclient.InferInput(name, list(array.shape), dt)
    inp.set_data_from_numpy(array)
    return inp


def model_ready(client, name: str, version: str = "") -> bool:
    """ModelReady through tritonclient, where an unknown model or version may answer
    either ``ready: false`` or NOT_FOUND (both are "not ready")."""
    from tritonclient.utils import InferenceServerException

    try:
        return client.is_model_ready(name, version)
    except InferenceServerException as exc:
        assert status_of(exc) == "NOT_FOUND", exc
        return False


def scrape(server: ServerProcess) -> str:
    """The server's /metrics text."""
    with urllib.request.urlopen(server.metrics_url + "/metrics", timeout=10) as response:
        return response.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", line)
        if m:
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
    return total
