"""Repository change hooks: per-model health, lifecycle metrics and event logs.

Health (grpc.health.v1, service name = model name): SERVING while the name resolves to
a serving version, NOT_SERVING while it loads for the first time, drains, is unloaded or
failed. A reload of a serving model keeps it SERVING: the old versions serve until the
new ones replace them.
"""

from __future__ import annotations

import logging

from grpc_health.v1 import health_pb2

from tensorgate.observability.stats import ModelEvents

log = logging.getLogger("tensorgate.models")

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_COUNTED = {"loaded": "load", "load_failed": "load_failed", "unloaded": "unload"}


class ModelHooks:
    """A ModelRepository listener (``repository.listeners.append(hooks)``)."""

    def __init__(self, repository, health=None, events: ModelEvents | None = None) -> None:
        self._repository = repository
        self._health = health
        self.events = events if events is not None else ModelEvents()

    async def __call__(self, event: str, name: str, **fields) -> None:
        counted = _COUNTED.get(event)
        if counted is not None:
            self.events.count(name, counted)
        if event == "loaded":
            self.events.loaded(name, fields.get("seconds", 0.0))
        level = logging.WARNING if event == "load_failed" else logging.INFO
        detail = " ".join(f"{k}={v}" for k, v in fields.items())
        log.log(level, "model %s %s%s", name, event, f" {detail}" if detail else "",
                extra={"event": "model", "action": event, "model": name, **fields})
        if self._health is not None:
            serving = name in self._repository.table.default
            await self._health.set(name, _SERVING if serving else _NOT_SERVING)
