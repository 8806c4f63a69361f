"""Write deploy/schemas/: the openAPIV3Schema of each custom resource kind the manifests
in deploy/ use, taken from its project's CRD at a release tag, so tests/deploy validates
them offline.

    python tools/deploy/vendor_crd_schemas.py \
        --kserve ~/src/kserve --prometheus-operator ~/src/prometheus-operator

Each argument is a git clone of that project (the tag must be in it). Large subtrees the
manifests never use (the other model frameworks of an InferenceService's predictor, its
transformer and explainer, pod-level fields such as volumes and affinity) are replaced
by ``{"type": ..., "x-kubernetes-preserve-unknown-fields": true}``, which keeps each
file small; every replaced path is listed in the file's ``$comment`` next to the
source repository, tag, commit and path, so what the test checks is stated exactly.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "deploy" / "schemas"

PREDICTOR_FRAMEWORKS = ("huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch",
                        "sklearn", "tensorflow", "triton", "xgboost")
POD_FIELDS = ("affinity", "volumes", "workerSpec", "initContainers", "containers",
              "topologySpreadConstraints", "resourceClaims")


@dataclass(frozen=True)
class Source:
    repo: str  # owner/name on GitHub
    option: str  # command-line option naming the local clone
    tag: str
    path: str  # the CRD file in the repository
    version: str  # the CRD version whose schema is taken
    prune: tuple[str, ...]  # dotted paths under the schema's properties


SOURCES = (
    Source("kserve/kserve", "kserve", "v0.20.0",
           "config/crd/full/serving.kserve.io_inferenceservices.yaml", "v1beta1",
           tuple(f"spec.predictor.{f}" for f in PREDICTOR_FRAMEWORKS + POD_FIELDS)
           + ("spec.transformer", "spec.explainer", "spec.canary", "status")),
    Source("kserve/kserve", "kserve", "v0.20.0",
           "config/crd/full/serving.kserve.io_servingruntimes.yaml", "v1alpha1",
           ("spec.affinity", "spec.volumes", "spec.workerSpec", "spec.tolerations", "status")),
    Source("prometheus-operator/prometheus-operator", "prometheus_operator", "v0.93.0",
           "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml", "v1",
           ("status",)),
)


def _git(clone: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True,
                          check=True).stdout


def _prune(schema: dict, dotted: str) -> None:
    node = schema
    *parents, leaf = dotted.split(".")
    for name in parents:
        node = node["properties"][name]
    original = node["properties"][leaf]
    node["properties"][leaf] = {"type": original.get("type", "object"),
                                "x-kubernetes-preserve-unknown-fields": True}


def vendor(source: Source, clone: Path) -> Path:
    commit = _git(clone, "rev-list", "-n", "1", source.tag).strip()
    crd = yaml.safe_load(_git(clone, "show", f"{commit}:{source.path}"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == source.version)
    schema = version["schema"]["openAPIV3Schema"]
    for path in source.prune:
        _prune(schema, path)
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    document = {
        "$comment": {
            "source": f"https://github.com/{source.repo}/blob/{source.tag}/{source.path}",
            "commit": commit,
            "crd": crd["metadata"]["name"],
            "version": source.version,
            "pruned (preserve-unknown-fields)": list(source.prune),
            "made by": "tools/deploy/vendor_crd_schemas.py",
        },
        "apiVersion": f"{group}/{source.version}",
        "kind": kind,
        "schema": schema,
    }
    out = OUT / f"{kind.lower()}.{group}.{source.version}.json"
    out.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kserve", type=Path, required=True)
    parser.add_argument("--prometheus-operator", type=Path, required=True)
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        out = vendor(source, getattr(args, source.option))
        print(f"{out.relative_to(ROOT)}: {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
