"""Model registries as a repository source (MLflow): registered ONNX versions synced
into the repository, aliases as routes, lineage in each version's ModelConfig.

mlflow_source.py talks to MLflow (blocking, through the mlflow client), sync.py is the
background task that follows it, metrics.py its /metrics families. Needs the
``mlflow`` extra (``mlflow-skinny``).
"""

from __future__ import annotations

import os

from tensorgate.registry.metrics import RegistryCollector
from tensorgate.registry.mlflow_source import MlflowSource, tracking_uri
from tensorgate.registry.sync import RegistrySync, route_name

__all__ = ["RegistryCollector", "RegistrySync", "from_settings", "route_name"]


def from_settings(settings, repository, routes, environ=os.environ) -> RegistrySync:
    """The sync that --model-registry and the registry_* settings describe (not started).
    ValueError for a registry URI it cannot use, RuntimeError without the mlflow
    client."""
    from tensorgate._proto.tensorgate.v1 import control_pb2 as pb

    source = MlflowSource(tracking_uri(settings.model_registry, environ),
                          settings.registry_models, settings.registry_tag)
    source.check_client()
    stages = [float(x) for x in settings.registry_canary_stages.split(",") if x.strip()]
    canary = pb.RolloutSpec(stages=stages, hold_secs=settings.registry_canary_hold_secs,
                            auto_promote=True)
    return RegistrySync(source, repository, routes, settings.registry_poll_secs,
                        settings.registry_alias_move, canary)
