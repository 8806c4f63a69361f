"""Load-generator worker processes: each its own uvloop event loop and grpc.aio channel.

Why processes: one Python process tops out at one core of request handling; past
that the client, not the server, would set the pace. A step's concurrency or rate is
split across workers; each records its own histogram, merged by the parent.

Processes are spawned (not forked: the parent holds grpc channels, and grpc's threads
don't survive fork) once per run and reused for every step. Per step the parent sends
each worker its WorkerSpec, waits until every worker's channel is connected, then
sends one common start time so all workers warm up and measure in the same window.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback
from multiprocessing.connection import Connection, wait

from bench.harness.loadgen import WorkerResult, WorkerSpec

CONNECT_TIMEOUT_S = 30.0
START_DELAY_S = 0.1  # between "go" and the common start: every worker gets the message
STEP_MARGIN_S = 30.0  # beyond warm-up + duration + drain before a worker is given up
STOP_TIMEOUT_S = 5.0


class WorkerError(RuntimeError):
    """A worker failed; the message holds its traceback."""


def _worker_main(conn: Connection) -> None:
    # Imported here: the parent imports this module without needing uvloop or grpc.aio.
    import asyncio

    import uvloop

    from bench.harness import loadgen

    # One loop for the process' life: grpc.aio binds to the loop it first runs on.
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def step(spec: WorkerSpec) -> WorkerResult:
        channel = loadgen.open_channel(spec.url)
        try:
            await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
            conn.send(("ready",))
            # Blocking is fine here: nothing runs on this loop until the go.
            message = conn.recv()
            if message[0] == "stop":  # another worker failed to connect: the run is off
                raise SystemExit(0)

            def progress(ok: int, errors: int, warmup: int) -> None:
                conn.send(("progress", ok, errors, warmup))

            return await loadgen.drive(channel, spec, message[1], progress)
        finally:
            await channel.close()

    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            try:
                conn.send(("result", loop.run_until_complete(step(message[1]))))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        return  # the parent went away or the user pressed ^C: just end
    finally:
        loop.close()


class WorkerPool:
    """``size`` spawned worker processes; a context manager that always stops them."""

    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self._workers: list[tuple[mp.Process, Connection]] = []
        try:
            for index in range(size):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, args=(child,),
                                   name=f"bench-worker-{index}", daemon=True)
                proc.start()
                child.close()
                self._workers.append((proc, parent))
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self._workers]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for proc, conn in self._workers:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for proc, conn in self._workers:
            proc.join(STOP_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()  # our own child, by its handle (= its PID)
                proc.join(STOP_TIMEOUT_S)
            conn.close()
        self._workers = []

    def run_step(self, specs: list[WorkerSpec], on_progress=None) -> list[WorkerResult]:
        """Run one step on the first len(specs) workers; their results, in order.

        ``on_progress(ok, errors, warmup_requests)``: totals over the workers, called as
        workers report (a few times a second).
        """
        if len(specs) > len(self._workers):
            raise ValueError(f"{len(specs)} worker specs for {len(self._workers)} workers")
        active = {self._workers[i][1]: i for i in range(len(specs))}
        for conn, i in active.items():
            conn.send(("step", specs[i]))
        self._await_all(active, "ready", CONNECT_TIMEOUT_S + 5)
        start_ns = time.monotonic_ns() + int(START_DELAY_S * 1e9)
        for conn in active:
            conn.send(("go", start_ns))
        longest = max(s.warmup_s + s.duration_s + s.drain_s for s in specs)
        deadline = time.monotonic() + START_DELAY_S + longest + STEP_MARGIN_S
        results: dict[int, WorkerResult] = {}
        progress = {i: (0, 0, 0) for i in active.values()}
        while len(results) < len(active):
            if time.monotonic() > deadline:
                self.close()
                raise WorkerError(f"workers did not finish within {longest + STEP_MARGIN_S:.0f} s")
            for conn in wait([c for c, i in active.items() if i not in results], timeout=0.25):
                kind, *body = self._recv(conn, active[conn])
                if kind == "progress":
                    progress[active[conn]] = tuple(body)
                elif kind == "result":
                    results[active[conn]] = body[0]
                    ok, errors = body[0].ok, sum(body[0].errors.values())
                    progress[active[conn]] = (ok, errors, body[0].warmup_requests)
            if on_progress is not None:
                on_progress(*(sum(p[k] for p in progress.values()) for k in range(3)))
        return [results[i] for i in range(len(specs))]

    def _recv(self, conn: Connection, index: int) -> tuple:
        try:
            message = conn.recv()
        except EOFError:
            proc = self._workers[index][0]
            proc.join(1)
            raise WorkerError(f"worker {index} died (exit code {proc.exitcode})") from None
        if message[0] == "error":
            raise WorkerError(f"worker {index} failed:\n{message[1]}")
        return message

    def _await_all(self, active: dict[Connection, int], kind: str, timeout: float) -> None:
        pending = set(active)
        deadline = time.monotonic() + timeout
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"{len(pending)} worker(s) not {kind} within {timeout:.0f} s "
                                  "(is the server reachable?)")
            for conn in wait(list(pending), timeout=remaining):
                message = self._recv(conn, active[conn])
                if message[0] != kind:
                    raise WorkerError(f"worker {active[conn]}: expected {kind}, got {message[0]}")
                pending.discard(conn)
