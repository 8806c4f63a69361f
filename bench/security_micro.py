"""Cost of the per-call security checks, and interceptor vs inline (DESIGN.md asks).

    python bench/security_micro.py [--seconds 3] [--concurrency 64]

1. In-process: ``Guard.check`` (bearer token + role + rate-limit bucket) over a fake call
   context with tritonclient-like metadata, vs the ``guard is None`` test of the default.
2. End to end: a bare grpc.aio echo server on uvloop (bytes in, bytes out, one process)
   driven by a grpc.aio client process; variants: plain, a no-op server interceptor, the
   inline guard with auth + rate limits. Reports requests/s and µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
import timeit

TOKEN = "bench-token-0123456789"
ECHO = "/bench.Echo/Echo"


class _Ctx:
    _md = (("user-agent", "grpc-c/1.0 (linux; chttp2)"), ("authorization", f"Bearer {TOKEN}"),
           ("x-request-id", "abc"))

    def invocation_metadata(self):
        return self._md

    def peer(self):
        return "ipv4:127.0.0.1:50000"


def _guard():
    from tensorgate.security import Guard, RateLimiter, TokenTable
    from tensorgate.security.auth import parse_entries

    return Guard(TokenTable(parse_entries([f"{TOKEN} infer"], "bench")),
                 RateLimiter(1e9, 1 << 30), 1 << 30)


def in_process() -> None:
    guard, ctx, none = _guard(), _Ctx(), None
    n = 200_000
    t_check = min(timeit.repeat(lambda: guard.check(ctx, "infer", "ModelInfer"),
                                number=n, repeat=5)) / n
    t_enter = min(timeit.repeat(lambda: (guard.enter(), guard.leave()), number=n, repeat=5)) / n
    t_if = min(timeit.repeat("if g is not None: pass", globals={"g": none}, number=n * 10,
                             repeat=5)) / (n * 10)
    print(f"in-process: Guard.check (auth+role+rate) {t_check * 1e6:.2f} µs, "
          f"enter+leave {t_enter * 1e6:.2f} µs, 'guard is None' test {t_if * 1e9:.0f} ns")


def _serve(variant: str, port_q) -> None:
    import grpc
    import uvloop

    guard = _guard() if variant == "inline" else None

    class Noop(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            return await continuation(details)

    async def echo(data, context):
        if guard is not None:
            guard.check(context, "infer", "Echo")
            guard.enter()
            try:
                return data
            finally:
                guard.leave()
        return data

    async def main():
        server = grpc.aio.server(interceptors=[Noop()] if variant == "interceptor" else None)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_q.put(port)
        await server.wait_for_termination()

    uvloop.run(main())


def _drive(port: int, seconds: float, concurrency: int) -> float:
    import grpc
    import uvloop

    async def main():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(ECHO)
            md = (("authorization", f"Bearer {TOKEN}"),)
            payload = b"x" * 64
            for _ in range(200):
                await call(payload, metadata=md)
            done = 0
            stop = time.monotonic() + seconds

            async def worker():
                nonlocal done
                while time.monotonic() < stop:
                    await call(payload, metadata=md)
                    done += 1

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return done / (time.monotonic() - started)

    return uvloop.run(main())


def end_to_end(seconds: float, concurrency: int, rounds: int) -> None:
    ctx = mp.get_context("spawn")
    results: dict[str, list[float]] = {}
    for _ in range(rounds):
        for variant in ("plain", "interceptor", "inline"):
            q = ctx.Queue()
            proc = ctx.Process(target=_serve, args=(variant, q), daemon=True)
            proc.start()
            try:
                rate = _drive(q.get(timeout=30), seconds, concurrency)
            finally:
                proc.terminate()
                proc.join()
            results.setdefault(variant, []).append(rate)
    base = max(results["plain"])
    for variant, rates in results.items():
        best = max(rates)
        print(f"{variant:12s} {best:9.0f} req/s  {1e6 / best:6.1f} µs/req  "
              f"({(1e6 / best - 1e6 / base):+5.1f} µs vs plain)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    in_process()
    end_to_end(args.seconds, args.concurrency, args.rounds)
