"""The interface every benchmarked server shares, and the process plumbing behind it.

A peer is started as a subprocess in its own session (so its process group holds it and
every child it spawns: tritonserver, Python backend stubs), with stdout and stderr in a
log file rather than a pipe (a pipe nobody reads would block a chatty server). Readiness
means ModelReady says true for the model on the address returned, not merely that a
port is open.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

# The v2 protocol classes generated into TensorGate's private descriptor pool: they
# coexist with tritonclient's copies in one process (see tensorgate/_proto/__init__.py).
from tensorgate._proto.inference import grpc_service_pb2 as pb

LOOPBACK = "127.0.0.1"
LOG_TAIL_CHARS = 4000


class PeerStartError(RuntimeError):
    """A peer did not become ready; the message carries the tail of its log."""


def free_port() -> int:
    """A port free on loopback right now, for servers that cannot bind port 0 and say.

    Racy by nature (another process may take it before the server binds); start()
    reports the server's own bind error if that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # A peer runs in its own virtualenv: don't leak the caller's interpreter settings.
    # TENSORGATE_* settings are dropped too: a server is configured by its flags alone,
    # so a batching override in the caller's shell can't change what is measured.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
           and not k.startswith("TENSORGATE_")}
    env["PYTHONUNBUFFERED"] = "1"  # ready lines must reach the log at once
    env.update(extra or {})
    return env


class PeerServer:
    """One server under test. Subclasses fill in available() and _launch()."""

    name: str = "peer"
    #: gRPC metadata the server wants on every call (PyTriton's access token).
    grpc_headers: dict[str, str] = {}
    #: False where the server lacks an RPC perf_analyzer needs (MLServer: ModelConfig).
    supports_perf_analyzer: bool = True
    #: HTTP headers for the control calls (stats); not sent with infer requests.
    http_headers: dict[str, str] = {}
    #: Why the server has no HTTP/REST front end (None: it has one).
    no_http: str | None = None
    ready_timeout_s: float = 90.0
    stop_timeout_s: float = 10.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._log_file = None
        self.address: str | None = None
        #: HOST:PORT of its v2 HTTP/REST front end once started (None: it has none).
        self.http_address: str | None = None
        self.model: str | None = None
        self.grpc_headers = dict(type(self).grpc_headers)  # a copy per instance
        self.http_headers = dict(type(self).http_headers)

    # -- the interface -------------------------------------------------------------

    def available(self) -> str | None:
        """None if this peer can run here, else the precise reason it can't."""
        return None

    def start(self, repo: Path, model: str) -> str:
        """Start serving ``model`` from the Triton-layout ``repo``; return the gRPC
        HOST:PORT (the HTTP/REST one is then in ``http_address``).

        Returns only once ModelReady is true for the model. Raises PeerStartError with
        the captured log if the server exits, or is not ready within ready_timeout_s.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self.name} is already running (pid {self._proc.pid})")
        reason = self.available()
        if reason is not None:
            raise PeerStartError(f"{self.name} is not available: {reason}")
        repo = Path(repo).resolve()
        if not (repo / model / "config.pbtxt").is_file():
            # Fail now, not after ready_timeout_s of ModelReady answering false.
            raise PeerStartError(f"no model {model!r} in {repo} (no config.pbtxt)")
        self._workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self._log_path = self._workdir / "server.log"
        self.model = model
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            self.address = self._launch(repo, model, deadline)
            self._wait_model_ready(self.address, model, deadline)
        except PeerStartError:
            self.stop()
            raise
        except Exception as exc:
            log = self.log_tail()
            self.stop()
            raise PeerStartError(f"{self.name} failed to start: {exc!r}\n--- log ---\n{log}") from exc
        except BaseException:  # KeyboardInterrupt: never leave a server behind
            self.stop()
            raise
        return self.address

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL its process group after stop_timeout_s."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    pass
            # The group is ours (start_new_session): this also ends children the server
            # left behind, e.g. a Python backend stub whose parent was killed.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.address = self.http_address = None

    def pid(self) -> int:
        """PID of the server's main process."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    def group_pids(self) -> list[int]:
        """Every live process in the server's process group (main process first).

        For CPU/RSS accounting of servers that work in several processes: PyTriton runs
        tritonserver and a Python backend stub beside the process holding the model.
        """
        main = self.pid()
        pids = [main]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == main:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the ")" closing the command name: state ppid pgrp ...
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == main:
                pids.append(int(entry.name))
        return pids

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        return self._log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> PeerServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- for subclasses --------------------------------------------------------------

    def _launch(self, repo: Path, model: str, deadline: float) -> str:
        """Spawn the server (with _spawn) and return its gRPC address; set
        ``self.http_address`` where it serves HTTP/REST."""
        raise NotImplementedError

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen:
        self._log_file = open(self._log_path, "wb")
        self._proc = subprocess.Popen(
            argv,
            cwd=cwd or self._workdir,
            env=_clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self._proc

    def _script(self, path: Path) -> str:
        """A copy of a server script in the workdir, to run from there.

        Run in place, the script's folder (bench/peers) would come first on sys.path and
        its modules would shadow the packages they are named after: tensorgate.py,
        mlserver.py, pytriton.py.
        """
        return str(shutil.copy(path, self._workdir / path.name))

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise PeerStartError(
                f"{self.name} exited with status {code} before it was ready\n"
                f"--- log ---\n{self.log_tail()}")

    def _wait_for_line(self, pattern: str, deadline: float) -> re.Match:
        """Wait until the server's log has a line matching ``pattern``."""
        regex = re.compile(pattern, re.M)
        while True:
            match = regex.search(self._log_path.read_text(errors="replace"))
            if match:
                return match
            self._check_alive()
            if time.monotonic() > deadline:
                raise PeerStartError(
                    f"{self.name}: no line matching {pattern!r} within "
                    f"{self.ready_timeout_s:.0f} s\n--- log ---\n{self.log_tail()}")
            time.sleep(0.05)

    def _wait_model_ready(self, address: str, model: str, deadline: float) -> None:
        metadata = tuple(self.grpc_headers.items())
        last_error = "no answer"
        with grpc.insecure_channel(address) as channel:
            ready = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelReady",
                request_serializer=pb.ModelReadyRequest.SerializeToString,
                response_deserializer=pb.ModelReadyResponse.FromString,
            )
            while True:
                self._check_alive()
                try:
                    if ready(pb.ModelReadyRequest(name=model), timeout=2,
                             metadata=metadata).ready:
                        return
                    last_error = "ModelReady answered false"
                except grpc.RpcError as exc:
                    last_error = f"{exc.code().name}: {exc.details()}"
                if time.monotonic() > deadline:
                    raise PeerStartError(
                        f"{self.name}: {model} not ready on {address} within "
                        f"{self.ready_timeout_s:.0f} s ({last_error})\n"
                        f"--- log ---\n{self.log_tail()}")
                time.sleep(0.1)


#: The peers' own virtualenvs, made by setup_mlserver.sh, setup_pytriton.sh, setup_kserve.sh.
VENVS = Path(__file__).resolve().parent.parent / ".venvs"


def probe_venv(venv: Path, setup_script: str, code: str) -> str | None:
    """None if ``code`` runs in the virtualenv's python, else why not."""
    python = venv / "bin" / "python"
    if not python.exists():
        return f"virtualenv missing: run bench/peers/{setup_script}"
    probe = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                           timeout=120, env=_clean_env())
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{venv} is broken ({last}): rerun bench/peers/{setup_script}"
    return None


@dataclass(frozen=True)
class ModelSpec:
    """What a peer configured outside Triton's format needs from config.pbtxt."""

    name: str
    max_batch_size: int
    max_queue_delay_us: int
    intra_op_threads: int
    inputs: list[tuple[str, str, list[int]]]  # (name, v2 datatype, shape; -1 = batch)
    outputs: list[tuple[str, str, list[int]]]


def read_model_spec(repo: Path, model: str) -> ModelSpec:
    """Read the model's config.pbtxt: the one source of every peer's batch settings."""
    from google.protobuf import text_format

    from tensorgate._proto.inference import model_config_pb2 as mc

    config = text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())
    lead = [-1] if config.max_batch_size > 0 else []

    def describe(t) -> tuple[str, str, list[int]]:
        datatype = mc.DataType.Name(t.data_type)[len("TYPE_"):]
        return t.name, "BYTES" if datatype == "STRING" else datatype, lead + list(t.dims)

    threads = config.parameters.get("intra_op_thread_count")
    return ModelSpec(
        name=model,
        max_batch_size=config.max_batch_size,
        max_queue_delay_us=config.dynamic_batching.max_queue_delay_microseconds,
        intra_op_threads=int(threads.string_value) if threads else 1,
        inputs=[describe(t) for t in config.input],
        outputs=[describe(t) for t in config.output],
    )
