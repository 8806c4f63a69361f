"""The registry sync on /metrics: whether the registry answers, failures, and what the
sync did (prometheus_client collector, read from the metrics thread)."""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class RegistryCollector:
    def __init__(self, sync) -> None:
        self._sync = sync

    def collect(self):
        s = self._sync
        labels = ["registry"]
        where = [s.source.where]
        up = GaugeMetricFamily(
            "tensorgate_registry_up", "1 when the last poll of the model registry "
            "succeeded, 0 when it failed (what is loaded keeps serving)", labels=labels)
        if s.up is not None:
            up.add_metric(where, 1.0 if s.up else 0.0)
        failing = GaugeMetricFamily(
            "tensorgate_registry_consecutive_errors", "Failed registry polls in a row (0 "
            "when the last one succeeded)", labels=labels)
        failing.add_metric(where, s.consecutive_errors)
        last = GaugeMetricFamily(
            "tensorgate_registry_last_success_timestamp_seconds", "When the registry last "
            "answered a poll (Unix time; 0: never)", labels=labels)
        last.add_metric(where, s.last_success_unix)
        polls = CounterMetricFamily("tensorgate_registry_polls", "Registry polls finished",
                                    labels=labels)
        polls.add_metric(where, s.polls)
        errors = CounterMetricFamily(
            "tensorgate_registry_errors", "Registry polls that failed (unreachable, or an "
            "answer that could not be read)", labels=labels)
        errors.add_metric(where, s.errors)
        versions = CounterMetricFamily(
            "tensorgate_registry_versions", "Registered versions synced into the "
            "repository (added), removed from it, or refused (no usable ONNX model)",
            labels=labels + ["action"])
        versions.add_metric(where + ["added"], s.versions_added)
        versions.add_metric(where + ["removed"], s.versions_removed)
        versions.add_metric(where + ["refused"], s.version_failures)
        moves = CounterMetricFamily(
            "tensorgate_registry_alias_moves", "Alias moves applied to their routes",
            labels=labels)
        moves.add_metric(where, s.alias_moves)
        yield from (up, failing, last, polls, errors, versions, moves)
