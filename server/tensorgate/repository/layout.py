"""Triton's repository layout: ``<repo>/<model>/<version>/<default_model_filename>``,
and the version policy that picks which of a model's versions are served."""

from __future__ import annotations

from pathlib import Path

from tensorgate._proto.inference import model_config_pb2 as mc


def versions_on_disk(model_dir: Path) -> list[int]:
    """Numeric version directories, ascending. Non-numeric names are not versions."""
    out = []
    for p in model_dir.iterdir():
        if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"):
            out.append(int(p.name))
    return sorted(out)


def select_versions(policy: mc.ModelVersionPolicy, available: list[int]) -> list[int]:
    """Apply a version policy (latest N, all, specific) to the versions found on disk."""
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return list(available)
    if which == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in available if v in wanted]
    num = policy.latest.num_versions if which == "latest" else 1
    return available[-max(num, 1):] if available else []
