"""Log and trace settings changed while serving (Triton's LogSettings and TraceSetting),
over gRPC with tritonclient and over HTTP, on a server with a console trace exporter."""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from e2e_support import infer_input, model_subset, start_server, status_of


@pytest.fixture(scope="module")
def server(test_repo, tmp_path_factory):
    repo = model_subset(test_repo, tmp_path_factory.mktemp("live") / "repo")
    with start_server(repo, "--trace-exporter", "console", "--trace-sample-ratio", "1.0") as srv:
        yield srv


def _infer(client) -> None:
    client.infer("identity_fp32", [infer_input("INPUT0", np.ones((1, 2), np.float32))])


def _spans(server) -> int:
    return server.log.count('"name": "ModelInfer"')


def _wait_spans(server, at_least: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while _spans(server) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    return _spans(server)


def test_trace_level_turns_tracing_off_and_on(server, client):
    current = client.get_trace_settings(as_json=True)["settings"]
    assert current["trace_level"]["value"] == ["TIMESTAMPS"]
    assert current["trace_rate"]["value"] == ["1"]
    _infer(client)
    before = _wait_spans(server, 1)
    assert before >= 1

    client.update_trace_settings(settings={"trace_level": ["OFF"]})
    for _ in range(5):
        _infer(client)
    time.sleep(2.0)  # the batch span processor exports within its schedule delay
    assert _spans(server) == before

    reply = client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"],
                                                   "trace_rate": "1"}, as_json=True)
    assert reply["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]
    _infer(client)
    assert _wait_spans(server, before + 1) > before


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"trace_level": ["TENSORS"]}, "OFF or TIMESTAMPS"),
        ({"trace_rate": "0"}, "'trace_rate'"),
        ({"trace_count": "10"}, "only '-1'"),
        ({"trace_file": "/tmp/x"}, "only ''"),
        ({"no_such": "1"}, "is not known"),
    ],
)
def test_trace_settings_it_cannot_honour_are_refused(client, settings, words):
    with pytest.raises(InferenceServerException) as err:
        client.update_trace_settings(settings=settings)
    assert status_of(err.value) == "INVALID_ARGUMENT" and words in str(err.value)
    with pytest.raises(InferenceServerException) as err:
        client.update_trace_settings(model_name="identity_fp32", settings={"trace_rate": "2"})
    assert "per-model trace settings are not supported" in str(err.value)


def test_log_settings_change_the_level(server, client):
    current = client.get_log_settings(as_json=True)["settings"]
    assert current["log_info"]["bool_param"] is True
    client.update_log_settings({"log_verbose_level": 1})
    assert client.get_log_settings(as_json=True)["settings"]["log_verbose_level"][
        "uint32_param"] == 1
    client.update_log_settings({"log_verbose_level": 0, "log_info": False})
    client.unload_model("identity_bytes")  # an INFO line: now below the level
    client.load_model("identity_bytes")
    time.sleep(0.5)
    assert "identity_bytes loaded on request" not in server.log
    client.update_log_settings({"log_info": True})
    with pytest.raises(InferenceServerException) as err:
        client.update_log_settings({"log_file": "/tmp/tg.log"})
    assert "'log_file' is not supported" in str(err.value)


def test_settings_over_http(server):
    base = f"http://{server.http_url}"

    def call(path, body=None):
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data),
                                    timeout=10) as reply:
            return json.loads(reply.read())

    assert call("/v2/trace/setting")["trace_level"] == ["TIMESTAMPS"]
    assert call("/v2/trace/setting", {"trace_rate": "4"})["trace_sample_ratio"] == "0.25"
    assert call("/v2/trace/setting", {"trace_rate": None})["trace_rate"] == "1"
    assert call("/v2/logging")["log_format"] == "text"
    assert call("/v2/logging", {"log_verbose_level": 0})["log_info"] is True
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        assert client.get_trace_settings()["trace_mode"] == "opentelemetry"
        assert client.get_log_settings()["log_error"] is True
    finally:
        client.close()


def test_tracing_cannot_be_turned_on_without_an_exporter(test_repo, tmp_path):
    repo = model_subset(test_repo, tmp_path / "repo")
    with start_server(repo) as srv:
        c = grpcclient.InferenceServerClient(srv.grpc_url)
        try:
            assert c.get_trace_settings(as_json=True)["settings"]["trace_level"]["value"] == [
                "OFF"]
            with pytest.raises(InferenceServerException) as err:
                c.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]})
            assert status_of(err.value) == "FAILED_PRECONDITION"
            assert "--trace-exporter" in str(err.value)
        finally:
            c.close()
