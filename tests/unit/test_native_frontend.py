"""The native front end's contract with the event loop, driven directly (no server).

A real grpc++ server on a free port and real grpcio clients; the test plays the event
loop: it waits on ``fileno()``, drains, and answers. The relay of every other method
and the whole server on this front end are covered end to end (tests/e2e)."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time

import grpc
import pytest

from tensorgate.grpc import native

if not native.available():
    if os.environ.get("TENSORGATE_REQUIRE_NATIVE_FRONTEND") == "1":
        raise RuntimeError("the native front end was not built (grpc++ missing?)")
    pytest.skip("built without the native front end (no grpc++)", allow_module_level=True)

from tensorgate._ext.frontend import NativeAbort, NativeFrontend  # noqa: E402

METHOD = native.INFER_METHOD
STREAM = native.STREAM_METHOD
# grpc core may round a timeout up when it writes the grpc-timeout header (seen: a 30 s
# timeout arriving as 30.099 s), so a deadline can read a little past what was asked.
DEADLINE_ROUNDING_S = 0.5

# Hangs here would be in C++ (grpc++ waiting for a call), where the default SIGALRM
# timeout never gets to run: the thread method dumps every stack and ends the run.
pytestmark = pytest.mark.timeout(60, method="thread")


def _open(max_waiting: int = 100) -> NativeFrontend:
    # No backend: only ModelInfer is called here, and it never reaches the backend.
    return NativeFrontend(
        "127.0.0.1:0", "unix:/nonexistent/grpc.sock", METHOD, STREAM,
        max_receive_bytes=1 << 20, max_send_bytes=1 << 20, max_waiting=max_waiting,
    )


# Every ModelInfer call a test drained, answered or not (see _close).
_DRAINED: list = []


def _answer_drained() -> None:
    """Answers every call a test drained and left unanswered (a no-op for the others).
    A failed assertion leaves its calls unanswered, alive in the traceback; closing the
    client's channel or shutting grpc++ down would then wait for them forever, and the
    failure would never be reported."""
    for call in _DRAINED:
        call.fail(grpc.StatusCode.INTERNAL.value[0], "the test ended")
    _DRAINED.clear()


def _close(frontend) -> None:
    _answer_drained()
    frontend.shutdown(0.0)


def _drain_until(frontend, calls: int = 0, cancelled: int = 0, messages: int = 0,
                 timeout: float = 5.0):
    """Drains until that many calls, cancellations and stream messages came; returns
    (calls, cancelled), or (calls, messages, cancelled) when messages are asked for."""
    got_calls, got_messages, got_cancelled = [], [], []
    deadline = time.monotonic() + timeout
    while (len(got_calls) < calls or len(got_cancelled) < cancelled
           or len(got_messages) < messages):
        left = deadline - time.monotonic()
        assert left > 0, f"drained {len(got_calls)} calls, {len(got_cancelled)} cancels"
        select.select([frontend.fileno()], [], [], left)
        new, more, gone = frontend.drain()
        got_calls += new
        _DRAINED.extend(new)
        got_messages += more
        got_cancelled += gone
    if messages:
        return got_calls, got_messages, got_cancelled
    return got_calls, got_cancelled


@pytest.fixture()
def frontend():
    fe = _open()
    yield fe
    _close(fe)


@pytest.fixture()
def stub(frontend):
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        yield channel.unary_unary(METHOD)  # bytes in, bytes out
        _answer_drained()


def test_calls_reach_python_with_their_bytes_metadata_and_deadline(frontend, stub):
    first = stub.future(b"\x01first", metadata=[("x-key", "v1"), ("x-blob-bin", b"\x00\xff")],
                        timeout=30)
    second = stub.future(b"second")
    calls, _ = _drain_until(frontend, calls=2)
    by_data = {c.data: c for c in calls}
    assert set(by_data) == {b"\x01first", b"second"}
    one, two = by_data[b"\x01first"], by_data[b"second"]
    meta = dict(one.invocation_metadata())
    assert meta["x-key"] == "v1" and meta["x-blob-bin"] == b"\x00\xff"
    assert 25 < one.time_remaining() <= 30 + DEADLINE_ROUNDING_S
    assert two.time_remaining() is None
    assert one.peer().startswith("ipv4:127.0.0.1:")
    assert one.id != two.id
    one.finish(b"answer")
    two.fail(grpc.StatusCode.NOT_FOUND.value[0], "no such model 'x'")
    assert first.result(timeout=5) == b"answer"
    with pytest.raises(grpc.RpcError) as info:
        second.result(timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "no such model 'x'"
    one.finish(b"again")  # a call is answered once; later answers are ignored
    stats = frontend.stats()
    assert stats["infer_started"] == 2 and stats["infer_with_python"] == 0


def test_one_header_is_read_without_the_whole_metadata(frontend, stub):
    from tensorgate.context import RequestContext

    future = stub.future(b"call", metadata=[("x-key", "first"), ("x-key", "second"),
                                            ("x-blob-bin", b"\x00\xff"), ("x-text", "a b")],
                         timeout=30)
    (call,), _ = _drain_until(frontend, calls=1)
    # Values as invocation_metadata gives them: text decoded, -bin keys as bytes.
    assert call.metadata_value("x-key") == "first"
    assert call.metadata_value("x-blob-bin") == b"\x00\xff"
    assert call.metadata_value("x-text") == "a b"
    assert call.metadata_value("x-absent") is None
    ctx = RequestContext(0.0, call.invocation_metadata, "", call.metadata_value)
    assert ctx.header("x-key") == "first" and ctx.header("x-absent") is None
    assert ctx.header("x-blob-bin") == "\x00\xff"  # bytes read as latin-1, as before
    assert callable(ctx._metadata)  # a single lookup, not the whole metadata read
    assert ("x-key", "first") in ctx.metadata
    assert ctx.header("x-text") == "a b"  # read from the pairs once they are read
    call.finish(b"ok")
    assert future.result(timeout=5) == b"ok"


def test_abort_raises_the_status_for_the_dispatcher(frontend, stub):
    future = stub.future(b"x")
    (call,), _ = _drain_until(frontend, calls=1)
    with pytest.raises(NativeAbort) as info:
        call.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad tensor")
    assert (info.value.code, info.value.details) == (3, "bad tensor")
    call.fail(info.value.code, info.value.details)
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_python_drops_is_answered_internal(frontend, stub):
    future = stub.future(b"x")
    calls, _ = _drain_until(frontend, calls=1)
    _DRAINED.clear()  # the test's own list is the last reference
    del calls  # never answered: the front end must not wait for it forever
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=5)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "dropped" in err.value.details()


def test_cancelled_calls_are_reported_by_id(frontend, stub):
    future = stub.future(b"x", timeout=30)
    (call,), _ = _drain_until(frontend, calls=1)
    future.cancel()
    _, cancelled = _drain_until(frontend, cancelled=1)
    assert cancelled == [call.id]
    call.fail(grpc.StatusCode.CANCELLED.value[0], "cancelled")  # still answered once


def test_calls_past_the_waiting_limit_are_shed_resource_exhausted():
    frontend = _open(max_waiting=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            stub = channel.unary_unary(METHOD)
            waiting = [stub.future(b"w", timeout=30) for _ in range(2)]
            deadline = time.monotonic() + 5
            while frontend.stats()["infer_waiting"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.005)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub(b"third", timeout=5)
            assert time.monotonic() - started < 1.0  # answered at once, not queued
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "retry with backoff" in err.value.details()
            assert frontend.stats()["infer_shed"] == 1
            calls, _ = _drain_until(frontend, calls=2)
            for call in calls:
                call.finish(b"done")
            assert [f.result(timeout=5) for f in waiting] == [b"done", b"done"]
    finally:
        _close(frontend)


def test_shutdown_cancels_held_calls_after_the_grace(frontend, stub):
    future = stub.future(b"x", timeout=30)
    (call,), _ = _drain_until(frontend, calls=1)
    done = threading.Event()
    threading.Thread(target=lambda: (frontend.shutdown(0.2), done.set()), daemon=True).start()
    _, cancelled = _drain_until(frontend, cancelled=1)  # grpc++ cancels it after 0.2 s
    assert cancelled == [call.id]
    assert not done.is_set()  # still waits for Python's answer
    call.fail(grpc.StatusCode.CANCELLED.value[0], "shutting down")
    assert done.wait(5)
    with pytest.raises(grpc.RpcError) as err:
        future.result(timeout=5)
    assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


def test_an_address_in_use_is_an_error(frontend):
    with pytest.raises(RuntimeError, match="could not listen"):
        NativeFrontend(
            f"127.0.0.1:{frontend.port}", "unix:/nonexistent", METHOD, STREAM,
            max_receive_bytes=1 << 20, max_send_bytes=1 << 20, max_waiting=10,
        )


# -- the event loop's side: NativeInferDispatcher ----------------------------------------


class _Service:
    """Stands in for InferenceService.model_infer: echoes, aborts, or never returns."""

    async def model_infer(self, data: bytes, context) -> bytes:
        if data == b"abort":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        if data == b"hang":
            await asyncio.Event().wait()
        return b"re:" + data


async def _until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


def test_dispatcher_answers_every_call_once(frontend, stub):
    async def main():
        dispatcher = native.NativeInferDispatcher(frontend, _Service())
        dispatcher.start(asyncio.get_running_loop())
        ok, aborted, hung = stub.future(b"x"), stub.future(b"abort"), stub.future(b"hang")
        await _until(lambda: ok.done() and aborted.done()
                     and frontend.stats()["infer_with_python"] == 1)
        assert ok.result() == b"re:x"
        assert aborted.exception().code() == grpc.StatusCode.NOT_FOUND
        hung.cancel()  # the caller gives up: its task is cancelled and the call answered
        await _until(lambda: frontend.stats()["infer_with_python"] == 0)
        assert not dispatcher._running
        dispatcher.stop_watching()

    asyncio.run(main())


def test_dispatcher_answers_a_call_cancelled_before_its_task_ran(frontend, stub):
    """The call and its cancellation reach the loop in one drain: the task is cancelled
    before its first step, so its coroutine never runs; the call must still end."""

    async def main():
        dispatcher = native.NativeInferDispatcher(frontend, _Service())
        future = stub.future(b"hang", timeout=30)
        await _until(lambda: frontend.stats()["infer_waiting"] == 1)
        future.cancel()
        await asyncio.sleep(0.2)  # grpc++ queues the cancellation behind the call
        dispatcher.start(asyncio.get_running_loop())
        await _until(lambda: frontend.stats()["infer_with_python"] == 0)
        assert not dispatcher._running
        dispatcher.stop_watching()

    asyncio.run(main())


# -- ModelStreamInfer -----------------------------------------------------------------


def test_stream_messages_are_answered_in_answer_order_and_the_stream_ends(frontend):
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        stream = channel.stream_stream(STREAM)
        responses = stream(iter([b"m1", b"m2", b"m3"]), metadata=[("x-key", "v")], timeout=30)
        _, messages, _ = _drain_until(frontend, messages=3)
        by_data = {m.data: m for m in messages}
        assert set(by_data) == {b"m1", b"m2", b"m3"}
        assert len({m.id for m in messages}) == 1  # one stream
        assert dict(by_data[b"m1"].invocation_metadata())["x-key"] == "v"
        assert 25 < by_data[b"m1"].time_remaining() <= 30 + DEADLINE_ROUNDING_S
        assert frontend.stats()["stream_messages_with_python"] == 3
        # Answers while the loop holds others go out through the responder thread.
        by_data[b"m2"].answer(b"r2")
        by_data[b"m1"].answer(b"r1")
        by_data[b"m3"].skip()  # answered with nothing
        by_data[b"m3"].answer(b"late")  # a message is answered once
        assert list(responses) == [b"r2", b"r1"]  # then the stream ended OK
        assert responses.code() == grpc.StatusCode.OK
    assert frontend.stats()["stream_messages"] == 3
    assert frontend.stats()["stream_messages_with_python"] == 0


def test_a_failed_stream_ends_with_its_status_at_once(frontend):
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        gate = threading.Event()

        def requests():
            yield b"a"
            yield b"b"
            gate.wait(10)  # the caller keeps its side open

        responses = channel.stream_stream(STREAM)(
            requests(), metadata=[("x-key", "v")], timeout=30)
        _, (first, second), _ = _drain_until(frontend, messages=2)
        first.fail(grpc.StatusCode.UNAUTHENTICATED.value[0], "no bearer token")
        with pytest.raises(grpc.RpcError) as err:
            list(responses)  # without waiting for `second`
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.value.details() == "no bearer token"
        gate.set()
        # The message Python still holds keeps the stream's context readable, and its
        # late answer goes nowhere.
        assert dict(second.invocation_metadata())["x-key"] == "v"
        assert second.time_remaining() > 0
        second.answer(b"dropped")


def test_a_cancelled_stream_is_reported_by_its_id(frontend):
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        gate = threading.Event()

        def requests():
            yield b"x"
            gate.wait(10)  # keep the stream open

        responses = channel.stream_stream(STREAM)(requests(), timeout=30)
        _, (message,), _ = _drain_until(frontend, messages=1)
        responses.cancel()
        _, cancelled = _drain_until(frontend, cancelled=1)
        assert cancelled == [message.id]
        gate.set()
        del message  # dropped unanswered: counted as answered with nothing


def test_shutdown_ends_streams_whose_messages_python_still_holds():
    frontend = _open()
    with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
        gate = threading.Event()

        def requests():
            yield b"held"
            gate.wait(10)

        responses = channel.stream_stream(STREAM)(requests(), timeout=30)
        _, (held,), _ = _drain_until(frontend, messages=1)
        started = time.monotonic()
        frontend.shutdown(0.0)  # returned: grpc++ let go of the stream
        assert time.monotonic() - started < 5
        with pytest.raises(grpc.RpcError) as err:
            list(responses)
        assert err.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        gate.set()
        assert held.peer().startswith("ipv4:127.0.0.1:")  # still readable
        held.answer(b"too late")  # goes nowhere


def test_stream_messages_past_the_waiting_limit_get_an_error_message():
    from tensorgate._proto.inference import grpc_service_pb2 as pb

    frontend = _open(max_waiting=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{frontend.port}") as channel:
            gate = threading.Event()

            def requests():
                yield b"first"
                yield b"second"  # finds one message waiting already: shed
                gate.wait(10)

            responses = channel.stream_stream(STREAM)(requests(), timeout=30)
            shed = pb.ModelStreamInferResponse.FromString(next(responses))
            assert shed.error_message.startswith("server overloaded: 1 requests")
            assert "retry with backoff" in shed.error_message
            _, (message,), _ = _drain_until(frontend, messages=1)
            assert message.data == b"first"
            message.answer(b"r1")
            assert next(responses) == b"r1"
            gate.set()  # the caller half-closes; every message was answered: the end
            assert list(responses) == []
            assert frontend.stats()["infer_shed"] == 1
    finally:
        _close(frontend)
