"""What the Python client puts on the wire and how it treats the connection, seen from a
recording stand-in server: route key, auth and trace headers, deadlines, the retry rule
(wait for a connection; never resend), TLS and mutual TLS."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from clients_support import (
    RecordingServer,
    free_port,
    import_client,
    recording_server_later,
    reference_input,
    unavailable,
)

import_client()
from tensorgate_client import TLS, AsyncClient, Client, ConnectRetry, TensorGateError  # noqa: E402


def test_route_key_token_and_headers_go_with_the_call():
    with RecordingServer() as srv, Client(srv.url, token="s3cret", headers={"X-Team": "ml"}) as c:
        out = c.infer("simple_mlp", {"INPUT0": reference_input()}, route_key="tenant-7", timeout=5)
        call = srv.only_call()
    assert out["OUTPUT0"].shape == (2, 8)
    assert call.method == "ModelInfer"
    assert call.metadata["x-tensorgate-route-key"] == "tenant-7"
    assert call.metadata["authorization"] == "Bearer s3cret"
    assert call.metadata["x-team"] == "ml"
    request = triton_pb.ModelInferRequest.FromString(call.request)
    assert request.parameters["route_key"].string_param == "tenant-7"
    assert request.raw_input_contents[0] == reference_input().tobytes()


def test_no_route_key_no_header():
    with RecordingServer() as srv, Client(srv.url) as c:
        c.infer("simple_mlp", {"INPUT0": reference_input()})
        call = srv.only_call()
    assert "x-tensorgate-route-key" not in call.metadata and "authorization" not in call.metadata
    assert "route_key" not in triton_pb.ModelInferRequest.FromString(call.request).parameters


def test_the_deadline_reaches_the_server():
    with RecordingServer() as srv, Client(srv.url, timeout=30.0) as c:
        c.is_live(timeout=2.5)
        c.is_live()  # the client's default
    first, second = srv.calls
    # grpc-timeout is sent rounded up to its unit: allow a little over.
    assert 1.5 < first.time_remaining <= 2.6
    assert 25 < second.time_remaining <= 30.5


def test_no_deadline_when_none_is_set():
    with RecordingServer() as srv, Client(srv.url) as c:
        c.is_live()
    assert srv.only_call().time_remaining is None


def test_a_slow_server_gives_deadline_exceeded():
    def slow(method, request, context):
        time.sleep(1.0)
        return triton_pb.ModelInferResponse().SerializeToString()

    with RecordingServer(slow) as srv, Client(srv.url) as c:
        start = time.monotonic()
        with pytest.raises(TensorGateError) as err:
            c.infer("simple_mlp", {"INPUT0": reference_input()}, timeout=0.3)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 0.9
        assert len(srv.calls) == 1  # it was sent, then timed out


def test_unavailable_from_the_server_is_not_retried():
    def refuse(method, request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "model is loading")

    with RecordingServer(refuse) as srv, Client(srv.url) as c:
        with pytest.raises(TensorGateError) as err:
            c.infer("simple_mlp", {"INPUT0": reference_input()}, timeout=5)
        assert (err.value.code, err.value.message) == (grpc.StatusCode.UNAVAILABLE, "model is loading")
        assert len(srv.calls) == 1  # the server may have seen it: never resent


def test_a_call_waits_for_a_server_that_comes_up():
    port = free_port()
    with Client(f"127.0.0.1:{port}", connect=ConnectRetry(timeout=10, initial_backoff=0.05)) as c:
        with recording_server_later(port, delay=0.5) as later:
            start = time.monotonic()
            assert c.is_live(timeout=10) is True
            waited = time.monotonic() - start
        assert 0.4 < waited < 5
        assert len(later["server"].calls) == 1  # sent once, after the connection came


def test_no_server_fails_unavailable_after_the_connect_wait():
    port = free_port()
    with Client(f"127.0.0.1:{port}", connect=ConnectRetry(timeout=0.6)) as c:
        start = time.monotonic()
        with pytest.raises(TensorGateError) as err:
            c.is_live()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "not sent" in err.value.message
        assert 0.5 < time.monotonic() - start < 3


def test_a_deadline_shorter_than_the_connect_wait_wins():
    with Client(f"127.0.0.1:{free_port()}", connect=ConnectRetry(timeout=10)) as c:
        start = time.monotonic()
        with pytest.raises(TensorGateError) as err:
            c.is_live(timeout=0.5)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 2


def test_async_client_waits_for_a_server_and_sends_headers():
    port = free_port()

    async def main():
        async with AsyncClient(f"127.0.0.1:{port}", token="t", connect=ConnectRetry(timeout=10)) as c:
            return await c.infer("simple_mlp", {"INPUT0": reference_input()}, route_key="r", timeout=10)

    with recording_server_later(port, delay=0.3) as later:
        out = asyncio.run(main())
    call = later["server"].only_call()
    assert out["OUTPUT0"].shape == (2, 8)
    assert call.metadata["x-tensorgate-route-key"] == "r" and call.metadata["authorization"] == "Bearer t"
    assert 5 < call.time_remaining <= 10.5


# -- trace context ----------------------------------------------------------------------


def _otel_trace():
    try:
        from opentelemetry import trace
    except ImportError:
        unavailable("opentelemetry-api is not installed (pip install -e 'clients/python[otel]')")
    return trace


def test_trace_context_is_propagated_when_a_span_is_current():
    trace = _otel_trace()
    context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    with RecordingServer() as srv, Client(srv.url) as c:
        with trace.use_span(trace.NonRecordingSpan(context)):
            c.is_live()
        c.is_live()  # outside the span: nothing to propagate
    inside, outside = srv.calls
    assert inside.metadata["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert "traceparent" not in outside.metadata


# -- TLS --------------------------------------------------------------------------------


def _tls_server(pki, require_client_auth: bool) -> RecordingServer:
    credentials = grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.pem").read_bytes())],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=require_client_auth,
    )
    return RecordingServer(credentials=credentials)


def test_tls_with_a_private_root(pki):
    with _tls_server(pki, require_client_auth=False) as srv:
        with Client(srv.url, tls=TLS.from_files(root_certificates=pki / "ca.pem"), token="t") as c:
            assert c.is_live(timeout=5)
        assert srv.only_call().metadata["authorization"] == "Bearer t"
        # The system roots do not know our CA: the handshake fails, nothing is sent.
        with Client(srv.url, tls=TLS(), connect=ConnectRetry(timeout=0.5)) as c:
            with pytest.raises(TensorGateError) as err:
                c.is_live(timeout=5)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(srv.calls) == 1


def test_mutual_tls(pki):
    tls = TLS.from_files(
        root_certificates=pki / "ca.pem",
        certificate_chain=pki / "client.pem",
        private_key=pki / "client.key",
        server_name="localhost",
    )
    with _tls_server(pki, require_client_auth=True) as srv:
        with Client(srv.url, tls=tls) as c:
            assert c.infer("simple_mlp", {"INPUT0": reference_input()}, timeout=5)["OUTPUT0"].shape == (2, 8)
        anonymous = TLS.from_files(root_certificates=pki / "ca.pem")
        with Client(srv.url, tls=anonymous, connect=ConnectRetry(timeout=0.5)) as c:
            with pytest.raises(TensorGateError) as err:
                c.is_live(timeout=5)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(srv.calls) == 1


def test_tls_needs_key_and_chain_together(pki):
    with pytest.raises(ValueError, match="together"):
        TLS(private_key=b"k")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="HOST:PORT"):
        Client("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="backoff"):
        ConnectRetry(initial_backoff=5, max_backoff=1)
    with pytest.raises(ValueError, match="timeout"):
        Client("127.0.0.1:1", timeout=0)
