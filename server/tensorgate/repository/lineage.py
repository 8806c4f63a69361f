"""Where a version came from: ``<model>/<version>/lineage.json``.

A flat JSON object of strings, written by the tools that make versions (the registry
sync: ``mlflow.registered_model``, ``mlflow.version``, ``mlflow.run_id``,
``mlflow.source``; ``tensorgate optimize``: ``optimize.from_version``,
``optimize.method``, ...). At load its entries become parameters of that version's
ModelConfig (config.pbtxt is one file per model, lineage is per version), so
ModelConfig answers which registered version, run and artifact a served version is.
"""

from __future__ import annotations

import json
from pathlib import Path

from tensorgate._proto.inference import model_config_pb2 as mc
from tensorgate.errors import ModelLoadError
from tensorgate.fileio import atomic_write_text

LINEAGE_FILE = "lineage.json"
MAX_BYTES = 64 << 10


def read(path: Path) -> dict[str, str]:
    """The entries of a lineage file; {} when there is none; ModelLoadError when it is
    not a JSON object of strings (a broken record is a broken version)."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ModelLoadError(f"{LINEAGE_FILE}: larger than {MAX_BYTES} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{LINEAGE_FILE}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ModelLoadError(f"{LINEAGE_FILE}: expected a JSON object of strings")
    return data


def read_version(files, version: int) -> dict[str, str]:
    """The lineage of one version of a model (``files``: its ModelFiles)."""
    return read(files.file(str(version), LINEAGE_FILE, what="lineage"))


def write(directory: Path, entries: dict[str, str]) -> Path:
    """Write ``directory/lineage.json`` atomically (temp file, fsync, rename)."""
    path = Path(directory) / LINEAGE_FILE
    text = json.dumps({k: str(v) for k, v in entries.items()}, indent=2, sort_keys=True)
    atomic_write_text(path, text + "\n", sync_dir=False)
    return path


def apply(config: mc.ModelConfig, entries: dict[str, str]) -> None:
    """Add the entries to a version's config as string parameters (they win over a
    config.pbtxt parameter of the same name, which would describe the whole model)."""
    for key, value in entries.items():
        config.parameters[key].string_value = value
