"""``tensorgate_client.AsyncClient`` against a live ``tensorgate serve``: the same calls
as the blocking client, awaited, including concurrency on one channel and streams."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from clients_support import import_client, reference_input

import_client()
from tensorgate_client import AsyncClient, TensorGateError  # noqa: E402


def run(server, body, timeout: float = 30.0):
    """Run ``body(client)`` on a fresh loop with a fresh client; fail on a hang."""

    async def main():
        async with AsyncClient(server.grpc_url, timeout=10.0) as client:
            return await asyncio.wait_for(body(client), timeout)

    return asyncio.run(main())


def test_server_and_model_rpcs(server):
    async def body(c: AsyncClient):
        assert await c.is_live() and await c.is_ready()
        assert await c.model_ready("multi_io") and not await c.model_ready("no_such_model")
        assert (await c.server_metadata()).name == "tensorgate"
        assert [t.name for t in (await c.model_metadata("multi_io")).inputs] == ["FEATURES", "COUNTS", "MASK"]
        assert (await c.model_config("text_lower")).max_batch_size == 0
        assert {e.name for e in await c.repository_index()} >= {"simple_mlp", "text_lower"}
        assert [s.name for s in await c.model_statistics("simple_mlp")] == ["simple_mlp"]
        await c.unload_model("text_lower")
        assert not await c.model_ready("text_lower")
        await c.load_model("text_lower")
        assert await c.model_ready("text_lower")

    run(server, body)


def test_concurrent_infers_match_the_blocking_client(server):
    from tensorgate_client import Client

    x = reference_input()
    with Client(server.grpc_url) as sync:
        expected = sync.infer("simple_mlp", {"INPUT0": x})["OUTPUT0"]

    async def body(c: AsyncClient):
        # 32 at once on one channel: the server batches them; each gets its own rows.
        rows = [x[i % 2 : i % 2 + 1] for i in range(32)]
        outs = await asyncio.gather(*(c.infer("simple_mlp", {"INPUT0": r}, route_key="k") for r in rows))
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out["OUTPUT0"], expected[i % 2 : i % 2 + 1])
        text = await c.infer("text_lower", {"TEXT": np.array([b"ABC"], dtype=object)})
        assert text["TEXT_LOWER"].tolist() == [b"abc"]

    run(server, body)


def test_errors_and_deadline(server):
    async def body(c: AsyncClient):
        with pytest.raises(TensorGateError) as err:
            await c.infer("no_such_model", {"INPUT0": reference_input()})
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "no_such_model" in err.value.message
        with pytest.raises(TensorGateError) as err:
            await c.infer("simple_mlp", {"INPUT0": np.zeros((1, 16), np.int32)})
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "INPUT0" in err.value.message
        with pytest.raises(TensorGateError) as err:
            await c.infer("simple_mlp", {"INPUT0": reference_input()}, timeout=1e-6)
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED

    run(server, body)


def test_stream_from_an_async_source(server):
    x = reference_input()

    async def requests():
        for i in range(5):
            await asyncio.sleep(0)
            yield {"INPUT0": x if i != 2 else np.zeros((1, 3), np.float32)}

    async def body(c: AsyncClient):
        return [r async for r in c.stream_infer("simple_mlp", requests())]

    results = run(server, body)
    assert len(results) == 5
    assert sorted(r.id for r in results if r.ok) == ["0", "1", "3", "4"]
    assert [r.outputs["OUTPUT0"].shape for r in results if r.ok] == [(2, 8)] * 4
    assert "INPUT0" in next(r.error for r in results if not r.ok)


def test_stream_raises_what_the_request_iterable_raised(server):
    def requests():
        yield {"INPUT0": reference_input()}
        raise KeyError("source broke")

    async def body(c: AsyncClient):
        seen = []
        with pytest.raises(KeyError, match="source broke"):
            async for r in c.stream_infer("simple_mlp", requests()):
                seen.append(r.id)
        return seen

    assert run(server, body) == ["0"]
