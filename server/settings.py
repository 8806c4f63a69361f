"""Server settings: one frozen, validated dataclass; each field is a flag and an env var.

``--grpc-port 9000`` on the command line and ``TENSORGATE_GRPC_PORT=9000`` in the
environment set the same field; the flag wins. Field docs become the ``--help`` text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "TENSORGATE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _doc(text: str, **extra: Any) -> dict:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class Settings:
    model_repository: Path | None = field(
        default=None,
        metadata=_doc("Triton-layout model repository; default: the bundled demo repository."),
    )
    host: str = field(default="127.0.0.1", metadata=_doc("Address both ports listen on."))
    grpc_port: int = field(default=8001, metadata=_doc("gRPC port (0 picks a free port)."))
    metrics_port: int = field(
        default=8002, metadata=_doc("HTTP /metrics port (0 picks a free port, -1 disables).")
    )
    log_level: str = field(default="INFO", metadata=_doc("One of " + ", ".join(LOG_LEVELS) + "."))
    default_max_batch_size: int = field(
        default=4,
        metadata=_doc(
            "max_batch_size given to a model whose config omits it and whose graph has a "
            "dynamic first dimension on every input and output (Triton's default is 4)."
        ),
    )
    max_message_mb: int = field(
        default=256, metadata=_doc("Largest gRPC message accepted or sent, in MiB.")
    )
    strict_readiness: bool = field(
        default=True,
        metadata=_doc(
            "ServerReady is true only when every model in the repository loaded (Triton's "
            "--strict-readiness); false: ready once loading finished, whatever failed."
        ),
    )
    shutdown_grace_secs: float = field(
        default=30.0,
        metadata=_doc("On SIGTERM/SIGINT, how long accepted requests may take to finish."),
    )

    def __post_init__(self) -> None:
        for name in ("grpc_port", "metrics_port"):
            port = getattr(self, name)
            low = -1 if name == "metrics_port" else 0
            if not low <= port <= 65535:
                raise ValueError(f"{name} must be in {low}..65535, got {port}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {LOG_LEVELS}, got {self.log_level!r}")
        if not 1 <= self.default_max_batch_size <= 1 << 20:
            raise ValueError(
                f"default_max_batch_size must be in 1..{1 << 20}, got {self.default_max_batch_size}"
            )
        if not 1 <= self.max_message_mb <= 2047:
            raise ValueError(f"max_message_mb must be in 1..2047, got {self.max_message_mb}")
        if not 0 <= self.shutdown_grace_secs <= 3600:
            raise ValueError(
                f"shutdown_grace_secs must be in 0..3600, got {self.shutdown_grace_secs}"
            )
        if self.model_repository is not None and not Path(self.model_repository).is_dir():
            raise ValueError(f"model_repository {str(self.model_repository)!r} is not a directory")


def _field_type(f: dataclasses.Field) -> type:
    hint = str(f.type)
    if "Path" in hint:
        return Path
    for name, typ in (("int", int), ("float", float), ("bool", bool)):
        if hint.startswith(name):
            return typ
    return str


def _parse_value(f: dataclasses.Field, raw: str) -> Any:
    typ = _field_type(f)
    if typ is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{f.name}: expected a boolean, got {raw!r}")
    if f.name == "log_level":
        return raw.upper()
    try:
        return typ(raw)
    except ValueError:
        raise ValueError(f"{f.name}: expected {typ.__name__}, got {raw!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per settings field; defaults stay None so env vars can apply."""
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = ENV_PREFIX + f.name.upper()
        default = f.default if f.default is not None else "(see above)"
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['doc']} Env: {env}. Default: {default}.",
        )


def from_sources(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Build Settings from flags (first), ``TENSORGATE_*`` env vars, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        raw = getattr(args, f.name, None)
        if raw is None:
            raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is not None:
            values[f.name] = _parse_value(f, raw)
    return Settings(**values)
