"""Routes and rollout state on disk: ``<repo>/.tensorgate/routes.json``.

Written atomically (temp file in the same directory, fsync, rename, fsync of the
directory): a crash leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.fileio import atomic_write_text

STATE_DIR = ".tensorgate"
STATE_FILE = "routes.json"


def state_path(repository_root: Path) -> Path:
    return Path(repository_root) / STATE_DIR / STATE_FILE


def load(path: Path) -> list[pb.Route]:
    """The saved routes; [] when there is no file. A corrupt file raises ValueError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        state = json_format.Parse(text, pb.RouteState(), ignore_unknown_fields=True)
    except (json_format.ParseError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a routes file: {exc}") from None
    return list(state.routes)


def save(path: Path, routes: list[pb.Route]) -> None:
    text = json_format.MessageToJson(pb.RouteState(routes=routes), indent=2, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text + "\n")
