"""What a Triton operator reaches for: model control modes, --load-model,
--exit-on-error, --strict-model-config, Triton-only flags refused with TensorGate's
equivalent, flag names in errors as typed, --state-dir beside a read-only repository,
and the `tensorgate health` / `tensorgate info` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from e2e_support import server_env, start_server
from test_security import certs  # noqa: F401  (the CA and certificates, a fixture)

TENSORGATE = [sys.executable, "-m", "tensorgate"]


def _run(*args, env=None, timeout=60):
    return subprocess.run(TENSORGATE + list(args), capture_output=True, text=True,
                          timeout=timeout, env=env or server_env())


def _index(client) -> dict:
    return {(m.name, m.version): (m.state, m.reason)
            for m in client.get_model_repository_index().models}


def test_explicit_mode_loads_only_what_it_is_told(test_repo):
    with start_server(test_repo, "--model-control-mode", "explicit",
                      "--load-model", "identity_fp32", "--load-model", "add_sub",
                      "--strict-model-config") as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        index = _index(client)
        assert index[("identity_fp32", "1")][0] == "READY"
        # add_sub has no config.pbtxt: strict config refuses it, naming why.
        state, reason = index[("add_sub", "")]
        assert state == "UNAVAILABLE" and "--strict-model-config" in reason
        assert index[("identity_int8", "")] == ("UNAVAILABLE", "not loaded")
        assert not client.is_model_ready("identity_int8")
        client.load_model("identity_int8")  # explicit: the API loads
        assert client.is_model_ready("identity_int8")
        client.unload_model("identity_int8")
        assert not client.is_model_ready("identity_int8")
        assert "model control explicit: loading identity_fp32, add_sub" in srv.log
        client.close()


@pytest.mark.parametrize("mode, words", [
    ("none", "--model-control-mode none"),
    ("poll", "not allowed if polling is enabled"),
])
def test_none_and_poll_modes_refuse_the_load_api(test_repo, mode, words):
    with start_server(test_repo, "--model-control-mode", mode) as srv:
        g = grpcclient.InferenceServerClient(srv.grpc_url)
        h = httpclient.InferenceServerClient(srv.http_url)
        assert g.is_model_ready("identity_fp32")  # every model loaded at start
        for client, status in ((g, "StatusCode.FAILED_PRECONDITION"), (h, "409")):
            for call in (client.load_model, client.unload_model):
                with pytest.raises(InferenceServerException) as err:
                    call("identity_fp32")
                assert words in err.value.message() and err.value.status() == status
        assert g.is_model_ready("identity_fp32")
        if mode == "poll":
            assert "polling the repository every 15 s" in srv.wait_for_log("polling")
        g.close()
        h.close()


def test_exit_on_error_exits_naming_the_failed_models(test_repo):
    """The test repository holds models that cannot load."""
    proc = _run("serve", "--model-repository", str(test_repo), "--host", "127.0.0.1",
                "--grpc-port", "0", "--http-port", "0", "--metrics-port", "-1",
                "--exit-on-error", timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "--exit-on-error: model(s) failed to load" in proc.stderr
    assert "corrupt_model" in proc.stderr and "bad_config" in proc.stderr
    assert " ready grpc=" not in proc.stderr


@pytest.mark.parametrize("args, words", [
    (["--exit-timeout-secs", "5"], "--exit-timeout-secs is a Triton flag TensorGate does "
                                   "not take; instead: --shutdown-grace-secs"),
    (["--allow-http=false"], "--http-port -1 turns HTTP off"),
    (["--log-verbose", "1"], "--log-level DEBUG"),
    (["--model-repository", "/tmp", "--model-repository", "/"],
     "--model-repository given 2 times (/tmp, /); TensorGate serves one model repository"),
    (["--log-format", "xml"], "--log-format must be text or json, got 'xml'"),
    (["--load-model", "x"], "--load-model needs --model-control-mode explicit"),
    (["--model-control-mode", "explicit", "--repository-poll-secs", "5"],
     "--repository-poll-secs polls the repository in --model-control-mode poll or auto"),
    (["--grpc-port", "70000"], "--grpc-port must be in 0..65535"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_bad_flags_are_refused_by_their_typed_name(args, words):
    proc = _run("serve", *args)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr, proc.stderr


def test_env_errors_name_the_variable():
    env = dict(server_env(), TENSORGATE_LOG_FORMAT="xml")
    proc = _run("serve", env=env)
    assert proc.returncode == 2
    assert "TENSORGATE_LOG_FORMAT must be text or json" in proc.stderr


def test_state_dir_keeps_routes_out_of_a_read_only_repository(test_repo, tmp_path):
    """Routes persist in --state-dir; the repository is not written (made read-only
    here, as a container's volume would be)."""
    from routes_support import control_pb2_grpc, cpb as pb

    repo = tmp_path / "repo"
    import shutil

    shutil.copytree(test_repo / "identity_fp32", repo / "identity_fp32")
    state = tmp_path / "state"
    for path in [repo, *repo.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        with start_server(repo, "--state-dir", str(state)) as srv:
            with grpc.insecure_channel(srv.grpc_url) as channel:
                stub = control_pb2_grpc.RoutingServiceStub(channel)
                route = pb.Route(name="ab")
                route.targets.add(model="identity_fp32", weight=100)
                stub.SetRoute(pb.SetRouteRequest(route=route), timeout=10)
        assert (state / "routes.json").exists()
        assert not (repo / ".tensorgate").exists()
        with start_server(repo, "--state-dir", str(state)) as srv:
            assert "restored 1 route(s)" in srv.log
    finally:
        for path in [repo, *repo.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_health_command_follows_the_servers_settings(test_repo):
    with start_server(test_repo, "--http-port", "-1") as srv:
        port = srv.grpc_url.rsplit(":", 1)[1]
        ok = _run("health", "--grpc-port", port)
        assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stdout + ok.stderr
        env = dict(server_env(), TENSORGATE_GRPC_PORT=port)  # as a container sets it
        assert _run("health", env=env).returncode == 0
        model = _run("health", "--grpc-port", port, "--service", "identity_fp32")
        assert model.returncode == 0
        unknown = _run("health", "--grpc-port", port, "--service", "nope")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout
    down = _run("health", "--grpc-port", port, "--timeout", "1")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stdout


def test_health_command_over_tls(test_repo, certs):  # noqa: F811 (the fixture)
    with start_server(test_repo, "--http-port", "-1", "--tls-cert", str(certs["server_cert"]),
                      "--tls-key", str(certs["server_key"])) as srv:
        port = srv.grpc_url.rsplit(":", 1)[1]
        args = ["--grpc-port", port, "--tls-cert", str(certs["server_cert"]),
                "--tls-key", str(certs["server_key"])]
        env = dict(server_env(), TENSORGATE_HEALTH_CA=str(certs["ca"]))
        proc = _run("health", *args, env=env)
        assert proc.returncode == 0 and "SERVING" in proc.stdout, proc.stdout + proc.stderr
        plain = _run("health", "--grpc-port", port, "--timeout", "2")
        assert plain.returncode == 1  # a plaintext probe of a TLS port fails


def test_info_reports_this_installation():
    from tensorgate.grpc import native

    proc = _run("info", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["tensorgate"]
    assert report["execution_providers"]["CPUExecutionProvider"] == "works"
    if "CUDAExecutionProvider" in report["execution_providers"] and not os.path.exists(
        "/dev/nvidia0"
    ):
        assert report["execution_providers"]["CUDAExecutionProvider"] != "works"
    frontend = report["front_ends"]["native (grpc++)"]
    assert (frontend is not None) == native.available()
    text = _run("info")
    assert "front end native (grpc++)" in text.stdout and "onnxruntime" in text.stdout


def test_otlp_endpoint_alone_turns_tracing_on(test_repo):
    """--otlp-endpoint used to be ignored without --trace-exporter otlp."""
    with start_server(test_repo, "--otlp-endpoint", "http://127.0.0.1:9") as srv:
        assert ("tracing on: exporter otlp to http://127.0.0.1:9 (from --otlp-endpoint)"
                in srv.wait_for_log("tracing on"))
    env = dict(server_env(), OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="tg-test",
               OTEL_TRACES_SAMPLER="always_off")
    with start_server(test_repo, env=env) as srv:
        log = srv.wait_for_log("tracing on")
        assert "exporter console (from OTEL_TRACES_EXPORTER), sample ratio 0" in log
        assert "service name tg-test" in log
    with start_server(test_repo) as srv:
        assert "tracing off (no --trace-exporter" in srv.wait_for_log("tracing off")


@pytest.mark.parametrize("args", [["--version"], ["serve", "--version"],
                                  ["health", "--version"], ["routes", "list", "--version"]])
def test_the_program_version_before_or_after_the_verb(args):
    from tensorgate import __version__

    proc = _run(*args)
    assert proc.returncode == 0 and proc.stdout.strip() == f"tensorgate {__version__}"
