"""The Kustomize pods, run with podman as a kubelet would run them (no cluster here).

For the base, the canary and the tls overlays: render with `kubectl kustomize`, then run
each init container and the server with the pod's user, read-only root file system,
dropped capabilities, environment, arguments and volumes (an emptyDir is a directory
owned by root and writable by all, as kubelet makes it with fsGroup; a Memory emptyDir a
tmpfs; a ConfigMap or Secret a directory of its files), and check what the probes check:
readiness (the gRPC health service, or the exec probe where TLS is on), liveness
(`/v2/health/live`), then a stop that exits 0. The canary pod answers its route from
both versions.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import container_support as support
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def _render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl", path=f"{Path(sys.executable).parent}")
    if kubectl is None:
        pytest.skip("kubectl not installed: pip install -e '.[test]'")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "kustomize" / overlay)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


class Pod:
    """The Deployment's pod template, run container by container with podman."""

    def __init__(self, docs: list[dict], image: str, workdir: Path, secrets: dict[str, Path]):
        self.spec = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
        self.image = image
        self.volumes: dict[str, Path | None] = {}
        for volume in self.spec["volumes"]:
            name = volume["name"]
            if "emptyDir" in volume:
                if volume["emptyDir"].get("medium") == "Memory":
                    self.volumes[name] = None  # tmpfs
                    continue
                path = workdir / name
                path.mkdir()
                path.chmod(0o777)
            elif "configMap" in volume:
                config = next(d for d in docs if d["kind"] == "ConfigMap"
                              and d["metadata"]["name"] == volume["configMap"]["name"])
                path = workdir / name
                path.mkdir(mode=0o755)
                for key, text in config["data"].items():
                    (path / key).write_text(text)
                    (path / key).chmod(0o644)
            elif "secret" in volume:
                path = secrets[volume["secret"]["secretName"]]
            else:
                raise AssertionError(f"volume not emulated: {volume}")
            self.volumes[name] = path

    def options(self, container: dict) -> list[str]:
        pod, own = self.spec.get("securityContext", {}), container.get("securityContext", {})
        user = own.get("runAsUser", pod.get("runAsUser"))
        group = own.get("runAsGroup", pod.get("runAsGroup"))
        opts = ["--user", f"{user}:{group}"] if user is not None else []
        if own.get("readOnlyRootFilesystem"):
            opts.append("--read-only")
        if "ALL" in own.get("capabilities", {}).get("drop", []):
            opts += ["--cap-drop", "ALL"]
        if own.get("allowPrivilegeEscalation") is False:
            opts += ["--security-opt", "no-new-privileges"]
        for mount in container.get("volumeMounts", []):
            host = self.volumes[mount["name"]]
            if host is None:
                opts += ["--tmpfs", mount["mountPath"]]
            else:
                opts += ["--volume", f"{host}:{mount['mountPath']}"
                         + (":ro" if mount.get("readOnly") else "")]
        for var in container.get("env", []):
            opts += ["--env", f"{var['name']}={var['value']}"]
        return opts

    def run_init_containers(self) -> None:
        for init in self.spec.get("initContainers", []):
            command = init["command"]
            proc = support.podman("run", "--rm", *self.options(init), "--entrypoint",
                                  command[0], self.image, *command[1:], *init.get("args", []),
                                  check=False, timeout=120)
            assert proc.returncode == 0, f"init container {init['name']}:\n{proc.stderr}"

    def start(self) -> tuple[support.Container, dict]:
        main = self.spec["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        # --read-only keeps podman's own /run and /tmp writable tmpfs mounts; the pod's
        # /tmp volume (a Memory emptyDir) is mounted over it, as on the kubelet.
        container = support.start(self.image, *main["args"], ports=ports,
                                  options=tuple(self.options(main)))
        return container, main


def _probe(container: support.Container, main: dict, probe: str) -> bool:
    spec = main[probe]
    if "grpc" in spec:
        try:
            support.wait_serving(container, timeout=0.5)
            return True
        except support.PodmanError:
            return False
    if "exec" in spec:
        return container.exec(*spec["exec"]["command"]).returncode == 0
    get = spec["httpGet"]
    scheme = get.get("scheme", "HTTP").lower()
    name = get["port"] if isinstance(get["port"], str) else next(
        p["name"] for p in main["ports"] if p["containerPort"] == get["port"])
    port = container.ports[name]
    context = ssl._create_unverified_context() if scheme == "https" else None  # as kubelet
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{get['path']}", timeout=3,
                                    context=context) as reply:
            return reply.status == 200
    except OSError:
        return False


def _run(overlay: str, image: str, tmp_path: Path, secrets=None) -> tuple:
    pod = Pod(_render(overlay), image, tmp_path, secrets or {})
    pod.run_init_containers()
    container, main = pod.start()
    deadline = time.monotonic() + 90
    while not _probe(container, main, "readinessProbe"):
        assert time.monotonic() < deadline and container.running(), container.logs()[-3000:]
        time.sleep(0.3)
    assert _probe(container, main, "startupProbe")
    assert _probe(container, main, "livenessProbe")
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert container.exec("sh", "-c", f"command -v {pre_stop[0]}").returncode == 0
    return pod, container


def test_base_pod(image, tmp_path):
    pod, container = _run("base", image, tmp_path)
    try:
        assert sorted(p.name for p in pod.volumes["models"].iterdir()) == [
            "README.md", "multi_io", "simple_mlp", "text_lower"]
        assert container.stop() == 0, container.logs()[-3000:]
    finally:
        container.remove()


def test_canary_pod_routes_to_both_versions(image, tmp_path):
    _pod, container = _run("overlays/canary", image, tmp_path)
    try:
        client = grpcclient.InferenceServerClient(container.url("grpc"))
        versions = set()
        for _ in range(300):
            inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(np.ones((1, 16), np.float32))
            versions.add(client.infer("mlp", [inp]).get_response().model_version)
            if versions == {"1", "2"}:
                break
        client.close()
        assert versions == {"1", "2"}
        listed = json.loads(container.exec("tensorgate", "routes", "list", check=True).stdout)
        assert [r["name"] for r in listed["routes"]] == ["mlp"]
        assert container.stop() == 0, container.logs()[-3000:]
    finally:
        container.remove()


def test_tls_pod_probes_over_tls(image, tmp_path, tls):
    pod, container = _run("overlays/tls", image, tmp_path, secrets={"tensorgate-tls": tls})
    try:
        main = pod.spec["containers"][0]
        assert "exec" in main["readinessProbe"]  # it passed above, over TLS
        assert container.stop() == 0, container.logs()[-3000:]
    finally:
        container.remove()
