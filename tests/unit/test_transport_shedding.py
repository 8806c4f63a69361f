"""Issue #8: calls grpc core sheds before grpc.aio accepts them (clients see CANCELLED).

The backlog limits are passed to grpc core, and core's own call counters (channelz) are
exposed so a shed call shows up on the server as started but neither succeeded nor
failed."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from prometheus_client import CollectorRegistry

from tensorgate.app import grpc_server_options
from tensorgate.observability.metrics import TransportCollector, exposition
from tensorgate.settings import Settings


def test_pending_call_limits_reach_grpc_core():
    default = dict(grpc_server_options(Settings()))
    assert "grpc.server.max_pending_requests" not in default  # grpc's own 1000 / 3000
    opts = dict(grpc_server_options(Settings(max_pending_calls=300)))
    assert opts["grpc.server.max_pending_requests"] == 100
    assert opts["grpc.server.max_pending_requests_hard_limit"] == 300
    with pytest.raises(ValueError):
        Settings(max_pending_calls=-1)


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in scrape")


def test_core_counters_reconcile_with_a_shedding_server():
    """A server whose loop is busy while a burst arrives: core holds at most 6 calls,
    sheds the rest as CANCELLED, and the counters account for every call."""

    async def main():
        server = grpc.aio.server(options=[
            ("grpc.server.max_pending_requests", 1),
            ("grpc.server.max_pending_requests_hard_limit", 6),
        ])

        async def echo(request, context):
            return request

        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TransportCollector())
        before = exposition(registry).decode()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                await ch.channel_ready()
                call = ch.unary_unary("/t.T/Echo")
                calls = [call(b"x", timeout=10) for _ in range(200)]
                # Hold the event loop (as a busy server does) while the burst reaches core.
                await asyncio.sleep(0)
                time.sleep(0.5)
                codes = []
                for c in calls:
                    try:
                        await c
                        codes.append(grpc.StatusCode.OK)
                    except grpc.aio.AioRpcError as exc:
                        codes.append(exc.code())
            after = exposition(registry).decode()  # the server's channelz node is alive
        finally:
            await server.stop(None)
        return codes, before, after

    codes, before, after = asyncio.run(main())
    shed = codes.count(grpc.StatusCode.CANCELLED)
    assert shed > 0 and codes.count(grpc.StatusCode.OK) + shed == len(codes)

    def delta(name):
        return _value(after, name) - _value(before, name)

    assert delta("tensorgate_grpc_calls_started_total") == len(codes)
    assert delta("tensorgate_grpc_calls_succeeded_total") == codes.count(grpc.StatusCode.OK)
    assert delta("tensorgate_grpc_calls_unfinished") == shed
