"""Run TensorGate's image with podman from Python: build it, start a container on
loopback ports, wait until it serves, stop it. Used by tests/container and
tools/container/measure.py; only the standard library and grpcio (a server dependency).

Every podman call gets CONTAINERS_CONF=tools/container/containers.conf (runc, no default
ulimits) unless the caller's environment names another file, so nothing depends on the
host's podman configuration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CONTAINERS_CONF = HERE / "containers.conf"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


class PodmanError(RuntimeError):
    pass


def env() -> dict:
    return dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)))


def available() -> str | None:
    """None when podman can run containers here, else why not."""
    if shutil.which("podman") is None:
        return "podman is not installed (bash tools/container/setup_podman.sh)"
    try:
        podman("info", timeout=60)
    except (PodmanError, subprocess.TimeoutExpired) as exc:
        return f"podman does not work here: {exc}"
    return None


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["podman", *args], env=env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise PodmanError(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def build_image(image: str, log: Path, base_image: str | None = None, timeout: float = 1500) -> str:
    """Build this checkout's image (tools/container/build_image.sh); its output goes to
    ``log``. The debootstrap base is built first when absent and no base is named."""
    extra = {"IMAGE": image}
    if base_image:
        extra["BASE_IMAGE"] = base_image
    with open(log, "w") as out:
        proc = subprocess.run(
            ["bash", str(HERE / "build_image.sh")],
            env=dict(env(), **extra), stdout=subprocess.PIPE, stderr=out, text=True,
            timeout=timeout, check=False,
        )
    if proc.returncode != 0:
        raise PodmanError(f"image build failed (exit {proc.returncode}); log {log}:\n"
                          + log.read_text()[-4000:])
    return image


def image_size(image: str) -> int:
    """Bytes, as podman counts the image (every layer, uncompressed)."""
    return int(json.loads(podman("image", "inspect", image).stdout)[0]["Size"])


@dataclass
class Container:
    name: str
    ports: dict[str, int] = field(default_factory=dict)  # "grpc" -> host port on 127.0.0.1

    def url(self, kind: str = "grpc") -> str:
        return f"127.0.0.1:{self.ports[kind]}"

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def exec(self, *args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *args, check=check, timeout=timeout)

    def inspect(self) -> dict:
        return json.loads(podman("container", "inspect", self.name).stdout)[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def stop(self, grace_s: int = 40) -> int:
        """SIGTERM (the image's STOPSIGNAL), SIGKILL after ``grace_s``; the exit code."""
        podman("stop", "--time", str(grace_s), self.name, timeout=grace_s + 30)
        return int(self.inspect()["State"]["ExitCode"])

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False, timeout=60)


def start(
    image: str,
    *args: str,
    volumes: tuple[str, ...] = (),
    environment: dict[str, str] | None = None,
    ports: dict[str, int] = PORTS,
    options: tuple[str, ...] = (),
    host_network: bool = False,
) -> Container:
    """``podman run -d`` with each of ``ports`` (name -> container port) published on a
    free 127.0.0.1 port. ``args`` follow the image's ENTRYPOINT (``serve ...``).
    ``host_network``: the host's network namespace instead (no bridge, no NAT); the
    server then listens on 127.0.0.1 at ``ports`` themselves."""
    name = f"tensorgate-{uuid.uuid4().hex[:10]}"
    cmd = ["run", "--detach", "--name", name, "--stop-timeout", "40"]
    for volume in volumes:
        cmd += ["--volume", volume]
    for key, value in (environment or {}).items():
        cmd += ["--env", f"{key}={value}"]
    if host_network:
        cmd += ["--network", "host", "--env", "TENSORGATE_HOST=127.0.0.1"]
        podman(*cmd, *options, image, *args)
        return Container(name, dict(ports))
    for port in ports.values():
        cmd += ["--publish", f"127.0.0.1::{port}"]
    podman(*cmd, *options, image, *args)
    container = Container(name)
    try:
        for kind, port in ports.items():
            mapped = podman("port", name, f"{port}/tcp").stdout.strip().splitlines()[0]
            container.ports[kind] = int(mapped.rsplit(":", 1)[1])
    except Exception:
        container.remove()
        raise
    return container


def wait_serving(container: Container, timeout: float = 90, service: str = "") -> float:
    """Poll grpc.health.v1 through the published gRPC port until SERVING; the seconds it
    took. Fails early, with the logs, if the container exits."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    start_s = time.monotonic()
    deadline = start_s + timeout
    # Reconnect at once: grpc's default backoff (1 s, growing) would round the time up.
    options = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20),
               ("grpc.max_reconnect_backoff_ms", 50)]
    with grpc.insecure_channel(container.url("grpc"), options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - start_s
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline or not container.running():
                raise PodmanError(f"{container.name} not serving after "
                                  f"{time.monotonic() - start_s:.1f} s:\n{container.logs()[-4000:]}")
            time.sleep(0.05)
