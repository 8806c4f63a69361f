"""Open-loop probe that records *when* each failed request failed and why.

    python bench/soak_probe.py 127.0.0.1:8001 1500 60   # URL, requests/s, seconds

For chasing soak errors (bench/results/2026-11-23-soak/): prints the count by status
and the first failures with their time offset and details.
"""

import asyncio
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak  # noqa: E402  (bench/ is not a package on this path)


async def main(url: str, rate: float, seconds: float) -> None:
    import grpc

    errors: collections.Counter = collections.Counter()
    failures = []
    async with grpc.aio.insecure_channel(url) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        body = soak.request_bytes()
        pending: set = set()
        t0 = time.monotonic()
        sent = 0

        async def one():
            try:
                await call(body, timeout=10)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1
                failures.append((round(time.monotonic() - t0, 3), exc.code().name,
                                 (exc.details() or "")[:120]))

        while time.monotonic() - t0 < seconds:
            due = int((time.monotonic() - t0) * rate)
            while sent < due:
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.001)
        await asyncio.gather(*pending)
    print(f"sent {sent}, errors {dict(errors)}")
    for failure in failures[:20]:
        print(failure)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
