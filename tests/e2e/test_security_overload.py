"""Far beyond capacity: the server sheds with RESOURCE_EXHAUSTED at once (in-flight cap,
queue bound), and the requests it accepted finish within their deadlines."""

from __future__ import annotations

import asyncio
import shutil
import time

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from e2e_support import start_server

BURST = 200
DEADLINE_S = 5.0


def _request(model: str, i: int) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, id=str(i))
    width = 4 if model == "identity_fp32" else 1
    req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, width])
    req.raw_input_contents.append(np.full((1, width), i, np.float32).tobytes())
    return req


async def _burst(url: str, model: str):
    async with grpc.aio.insecure_channel(url) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        await stub.ServerLive(pb.ServerLiveRequest(), timeout=5)

        async def one(i):
            started = time.monotonic()
            try:
                await stub.ModelInfer(_request(model, i), timeout=DEADLINE_S)
                code, details = grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details()
            return code, details, time.monotonic() - started

        return await asyncio.gather(*(one(i) for i in range(BURST)))


def test_overload_sheds_fast_and_accepted_requests_finish(test_repo, tmp_path):
    repo = tmp_path / "repo"
    for name in ("identity_fp32", "slow_queue"):
        shutil.copytree(test_repo / name, repo / name)
    with start_server(repo, "--max-inflight", "2") as srv:
        # slow_queue holds what it accepts for a 3 s batching window: two requests fill
        # the in-flight cap, the other 198 must be shed at once.
        started = time.monotonic()
        results = asyncio.run(_burst(srv.grpc_url, "slow_queue"))
        wall = time.monotonic() - started
        ok = [r for r in results if r[0] == grpc.StatusCode.OK]
        shed = [r for r in results if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(ok) + len(shed) == BURST, {(r[0], r[1]) for r in results}
        assert len(ok) == 2, (len(ok), len(shed))
        assert all("--max-inflight" in r[1] and "limit is 2" in r[1] for r in shed), shed[0]
        assert max(r[2] for r in shed) < 1.0  # shed at once, not after queueing
        assert 2.5 < max(r[2] for r in ok) < DEADLINE_S  # accepted: ran after the window
        assert wall < DEADLINE_S

        # A model with room is still served right after the storm.
        results = asyncio.run(_burst(srv.grpc_url, "identity_fp32"))
        codes = {r[0] for r in results}
        assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert sum(r[0] == grpc.StatusCode.OK for r in results) >= 2
