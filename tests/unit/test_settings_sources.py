"""Where settings come from: flags, TENSORGATE_* variables, the standard OTEL_*
variables, and the native front end's absence said out loud."""

from __future__ import annotations

import argparse
import logging

import pytest

from tensorgate import diagnostics
from tensorgate.grpc import native
from tensorgate.observability.tracing import resolve_exporter, sample_ratio
from tensorgate.settings import Settings, add_arguments, from_sources


def _settings(argv, environ=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_sources(parser.parse_args(argv), environ or {})


def test_repeated_flags_last_wins_and_lists_accumulate():
    s = _settings(["--grpc-port", "1", "--grpc-port", "2", "--model-control-mode", "explicit",
                   "--load-model", "a", "--load-model", "b"])
    assert s.grpc_port == 2 and s.load_model == ("a", "b")
    env = {"TENSORGATE_MODEL_CONTROL_MODE": "explicit", "TENSORGATE_LOAD_MODEL": "a, b,"}
    assert _settings([], env).load_model == ("a", "b")
    assert _settings(["--disable-auto-complete-config"]).strict_model_config is True


@pytest.mark.parametrize("configured, endpoint, environ, expected", [
    ("console", "", {"OTEL_TRACES_EXPORTER": "otlp"}, "console"),
    ("", "", {}, "none"),
    ("", "", {"OTEL_TRACES_EXPORTER": "otlp"}, "otlp"),
    ("", "", {"OTEL_TRACES_EXPORTER": "zipkin,console"}, "console"),
    ("", "", {"OTEL_TRACES_EXPORTER": "jaeger"}, "none"),
    ("", "http://c:4317", {}, "otlp"),
    ("", "", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "otlp"),
    ("", "", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, "otlp"),
    ("", "http://c:4317", {"OTEL_SDK_DISABLED": "true"}, "none"),
    ("", "", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, "none"),
])
def test_exporter_resolution(configured, endpoint, environ, expected):
    assert resolve_exporter(configured, endpoint, environ)[0] == expected


@pytest.mark.parametrize("configured, environ, expected", [
    (0.5, {"OTEL_TRACES_SAMPLER": "always_off"}, 0.5),
    (None, {"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
    (None, {"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 1.0),
    (None, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, 0.25),
    (None, {"OTEL_TRACES_SAMPLER": "bogus", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, 0.1),
    (None, {}, 1.0),
])
def test_sampler_variables(configured, environ, expected):
    assert sample_ratio(configured, environ) == expected


def test_a_build_without_grpcpp_warns_with_the_fix(monkeypatch, caplog):
    monkeypatch.setattr(native, "NativeFrontend", None)
    log = logging.getLogger("test.native")
    with caplog.at_level(logging.WARNING, logger="test.native"):
        diagnostics.warn_if_native_missing(Settings(), log)
        diagnostics.warn_if_native_missing(Settings(frontend="grpcio"), log)  # a choice
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert "libgrpc++-dev" in text and "bash tools/install_build_deps.sh" in text
    assert "a third of the native front end's throughput" in text
    report = diagnostics.installation_report()
    assert report["front_ends"]["native (grpc++)"] is None and "native_missing" in report
