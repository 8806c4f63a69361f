"""tensorgate._ext.batcher.Scheduler: Triton's dynamic batching rules.

Most tests drive poll(now) with a fake clock; the last ones run real worker threads
through next_batch().
"""

from __future__ import annotations

import math
import random
import re
import threading
import time

import pytest

from tensorgate._ext.batcher import QueueFull, QueuePolicy, Scheduler

INF = math.inf
T0 = 100.0  # fake clock origin, in seconds
SHAPE = (3, 224)


def us(microseconds: int) -> float:
    """T0 plus `microseconds`, computed the way the scheduler computes its times."""
    return T0 + microseconds / 1e6


def after(at: float, microseconds: int) -> float:
    """`at` plus `microseconds`, as the scheduler adds a delay or a timeout."""
    return at + microseconds / 1e6


def add(sched, item, rows=1, at=T0, shape=SHAPE, **kwargs):
    sched.enqueue(item, rows, shape, at, **kwargs)


# -- batch formation ------------------------------------------------------------------


def test_empty_queue_waits_forever():
    sched = Scheduler(8, max_queue_delay_us=100)
    assert sched.poll(T0) == ([], [], INF)


def test_max_batch_size_reached_dispatches_at_once():
    sched = Scheduler(4, max_queue_delay_us=10_000)
    for item in "abcde":
        add(sched, item)
    assert sched.poll(T0) == (["a", "b", "c", "d"], [], T0)
    assert (sched.size, sched.rows) == (1, 1)
    assert sched.poll(T0) == ([], [], us(10_000))


def test_group_mode_batches_the_heads_shape_from_anywhere_in_the_queue():
    """Variable-length batching: interleaved length buckets still batch by bucket; the
    head's bucket goes first, the others keep their order and their own windows."""
    sched = Scheduler(3, max_queue_delay_us=500, group_by_shape=True)
    for i, bucket in enumerate([8, 16, 8, 32, 8, 16, 8]):
        add(sched, f"{bucket}:{i}", at=us(i), shape=(bucket,))
    assert sched.poll(us(10)) == (["8:0", "8:2", "8:4"], [], us(10))  # max batch size
    # 16's window: 500 µs from its head; then each bucket waits out its own window.
    assert sched.poll(us(10)) == ([], [], after(us(1), 500))
    assert sched.poll(after(us(1), 500)) == (["16:1", "16:5"], [], after(us(1), 500))
    assert sched.poll(after(us(1), 500)) == ([], [], after(us(3), 500))
    assert sched.poll(after(us(3), 500)) == (["32:3"], [], after(us(3), 500))
    assert sched.poll(after(us(6), 500)) == (["8:6"], [], INF)
    plain = Scheduler(3, max_queue_delay_us=500)
    for i, bucket in enumerate([8, 16, 8]):
        add(plain, i, at=us(i), shape=(bucket,))
    assert plain.poll(us(10)) == ([0], [], us(10))  # Triton's: the head's run only


def test_waits_for_the_delay_then_dispatches_a_partial_batch():
    sched = Scheduler(8, max_queue_delay_us=500)
    add(sched, "a", rows=2, at=T0)
    add(sched, "b", rows=3, at=us(100))
    assert sched.poll(us(100)) == ([], [], us(500))
    assert sched.poll(us(499)) == ([], [], us(500))
    assert sched.poll(us(500)) == (["a", "b"], [], INF)
    assert (sched.size, sched.rows) == (0, 0)


def test_flush_dispatches_a_lone_request_without_waiting_out_the_delay():
    sched = Scheduler(8, max_queue_delay_us=500)
    add(sched, "a", at=T0, flush=True)
    assert sched.poll(T0) == (["a"], [], INF)
    # The flush ends when the queue empties: later arrivals wait for the delay again,
    # but never past the end of the window "a" opened (Triton would have held "a" and
    # sent both then).
    add(sched, "b", at=us(10))
    assert sched.poll(us(10)) == ([], [], us(500))
    assert sched.poll(us(500)) == (["b"], [], INF)
    add(sched, "c", at=us(600))  # a new window
    assert sched.poll(us(600)) == ([], [], after(us(600), 500))


def test_flush_takes_everything_already_queued():
    sched = Scheduler(8, max_queue_delay_us=500)
    add(sched, "a", at=T0)
    add(sched, "b", at=us(5), flush=True)
    assert sched.poll(us(5)) == (["a", "b"], [], INF)


def test_zero_delay_dispatches_whatever_is_there():
    sched = Scheduler(8)
    add(sched, "a", rows=3)
    assert sched.poll(T0) == (["a"], [], INF)


def test_next_request_that_does_not_fit_closes_the_batch():
    sched = Scheduler(4, max_queue_delay_us=1_000)
    add(sched, "a", rows=3)
    add(sched, "b", rows=2)
    assert sched.poll(T0) == (["a"], [], T0)
    assert sched.poll(T0) == ([], [], us(1_000))


def test_rows_over_max_batch_size_is_a_caller_error():
    sched = Scheduler(4)
    with pytest.raises(ValueError, match="request of 5 rows exceeds max_batch_size 4"):
        add(sched, "a", rows=5)
    with pytest.raises(ValueError, match="rows must be >= 1, got 0"):
        add(sched, "a", rows=0)
    assert sched.size == 0


def test_preferred_size_reached_dispatches_that_prefix():
    sched = Scheduler(8, preferred_batch_sizes=(4, 2), max_queue_delay_us=1_000)
    assert sched.preferred_batch_sizes == (2, 4)
    add(sched, "a")
    assert sched.poll(T0) == ([], [], us(1_000))
    add(sched, "b")
    add(sched, "c")
    # 1, 2 (preferred), 3: the largest preferred prefix goes, the rest waits.
    assert sched.poll(T0) == (["a", "b"], [], T0)
    add(sched, "d", rows=2, at=us(10))
    add(sched, "e", rows=3, at=us(10))
    # c + d = 3 rows, + e = 6 > 4: the run passes every preferred size without
    # hitting one, so what comes before the overshoot goes (Triton's rule).
    assert sched.poll(us(10)) == (["c", "d"], [], us(10))
    assert sched.poll(us(10)) == ([], [], after(us(10), 1_000))


def test_preferred_sizes_give_way_once_the_delay_has_passed():
    sched = Scheduler(8, preferred_batch_sizes=(2,), max_queue_delay_us=1_000)
    for item in "abc":
        add(sched, item)
    assert sched.poll(us(1_000)) == (["a", "b", "c"], [], INF)


def test_preferred_sizes_with_zero_delay_still_cut_at_a_preferred_size():
    sched = Scheduler(8, preferred_batch_sizes=(2,))
    for item in "abc":
        add(sched, item)
    assert sched.poll(T0) == (["a", "b"], [], T0)
    assert sched.poll(T0) == (["c"], [], INF)


def test_preferred_sizes_must_fit_max_batch_size():
    with pytest.raises(ValueError, match=re.escape("preferred batch size 16 is outside 1..8")):
        Scheduler(8, preferred_batch_sizes=(4, 16))


def test_shape_keys_never_share_a_batch_and_fifo_holds():
    sched = Scheduler(8, max_queue_delay_us=1_000)
    add(sched, "a1", shape=(1, 3))
    add(sched, "a2", shape=(1, 3))
    add(sched, "b1", shape=(1, 5))
    add(sched, "a3", shape=(1, 3))
    assert sched.poll(T0) == (["a1", "a2"], [], T0)
    assert sched.poll(T0) == (["b1"], [], T0)
    # a3 is alone now: it waits for the delay like any partial batch.
    assert sched.poll(T0) == ([], [], us(1_000))
    assert sched.poll(us(1_000)) == (["a3"], [], INF)


def test_no_batching_sends_one_request_per_batch():
    sched = Scheduler(0, max_queue_delay_us=1_000, batching=False)
    for item in "abc":
        add(sched, item, rows=5)
    assert sched.poll(T0) == (["a"], [], T0)
    assert sched.poll(T0) == (["b"], [], T0)
    assert sched.poll(T0) == (["c"], [], INF)
    with pytest.raises(ValueError, match="max_batch_size must be >= 1 when batching"):
        Scheduler(0)


# -- priorities -------------------------------------------------------------------------


def test_higher_priority_level_is_served_first():
    sched = Scheduler(2, max_queue_delay_us=1_000, priority_levels=3, default_priority_level=2)
    add(sched, "low", rows=2, priority=3)
    add(sched, "default", rows=2)
    add(sched, "high", rows=2, priority=1)
    assert [sched.poll(T0)[0] for _ in range(3)] == [["high"], ["default"], ["low"]]


def test_a_batch_follows_service_order_across_levels():
    sched = Scheduler(4, max_queue_delay_us=1_000, priority_levels=2, default_priority_level=2)
    add(sched, "l2-a")
    add(sched, "l2-b")
    add(sched, "l1-a", priority=1)
    add(sched, "l2-c")
    add(sched, "l2-d")
    assert sched.poll(T0) == (["l1-a", "l2-a", "l2-b", "l2-c"], [], T0)


def test_priority_out_of_range():
    sched = Scheduler(4, priority_levels=3, default_priority_level=1)
    with pytest.raises(ValueError, match=re.escape("expected 0 (default) or 1..3")):
        add(sched, "a", priority=4)
    with pytest.raises(ValueError, match=re.escape("expected 0 (default) or 1..3")):
        add(sched, "a", priority=-1)
    flat = Scheduler(4)
    with pytest.raises(ValueError, match="no priority levels"):
        add(flat, "a", priority=1)
    with pytest.raises(ValueError, match=re.escape("default_priority_level must be in 1..3")):
        Scheduler(4, priority_levels=3, default_priority_level=0)
    with pytest.raises(ValueError, match=re.escape("levels are 1..2")):
        Scheduler(4, priority_levels=2, default_priority_level=1, priority_policies={3: QueuePolicy()})


# -- queue policies, deadlines, cancel --------------------------------------------------


def test_reject_timeout_expires_with_reason_timeout():
    policy = QueuePolicy("REJECT", default_timeout_us=1_000)
    sched = Scheduler(8, max_queue_delay_us=10_000, default_policy=policy)
    add(sched, "a")
    add(sched, "b", at=us(500))
    assert sched.poll(us(500)) == ([], [], us(1_000))
    b_expires = after(us(500), 1_000)
    assert sched.poll(us(1_000)) == ([], [("a", "timeout")], b_expires)
    assert (sched.size, sched.rows) == (1, 1)
    assert sched.poll(b_expires - 1e-6) == ([], [], b_expires)
    assert sched.poll(b_expires) == ([], [("b", "timeout")], INF)


def test_delay_timeout_moves_behind_the_requests_that_have_not_timed_out():
    policy = QueuePolicy("DELAY", default_timeout_us=1_000, allow_timeout_override=True)
    sched = Scheduler(2, max_queue_delay_us=5_000, default_policy=policy)
    add(sched, "a", rows=1, at=T0)
    add(sched, "b", rows=2, at=us(100), timeout_us=1_000_000)
    # Polled before a's timeout, a would go alone (b does not fit beside it). After
    # it, a stands behind b, which fills a batch on its own; a is not rejected.
    assert sched.poll(us(2_000)) == (["b"], [], us(2_000))
    assert sched.poll(us(2_000)) == ([], [], us(5_000))
    assert sched.poll(us(5_000)) == (["a"], [], INF)


def test_delayed_requests_keep_their_order_and_still_batch():
    policy = QueuePolicy("DELAY", default_timeout_us=1_000)
    sched = Scheduler(8, max_queue_delay_us=1_500, default_policy=policy)
    add(sched, "a")
    add(sched, "b", at=us(200))
    b_times_out = after(us(200), 1_000)
    assert sched.poll(us(1_000)) == ([], [], b_times_out)
    add(sched, "c", at=us(1_100))
    assert sched.poll(b_times_out) == ([], [], us(1_500))
    assert sched.poll(us(1_500)) == (["c", "a", "b"], [], INF)


@pytest.mark.parametrize("override, expires_at", [(False, 1_000), (True, 5_000)])
def test_allow_timeout_override(override, expires_at):
    policy = QueuePolicy(default_timeout_us=1_000, allow_timeout_override=override)
    sched = Scheduler(8, max_queue_delay_us=100_000, default_policy=policy)
    add(sched, "a", timeout_us=5_000)
    assert sched.poll(T0) == ([], [], us(expires_at))
    assert sched.poll(us(expires_at) - 1e-6) == ([], [], us(expires_at))
    assert sched.poll(us(expires_at)) == ([], [("a", "timeout")], INF)


def test_override_without_a_request_timeout_keeps_the_default():
    policy = QueuePolicy(default_timeout_us=1_000, allow_timeout_override=True)
    sched = Scheduler(8, max_queue_delay_us=100_000, default_policy=policy)
    add(sched, "a")
    assert sched.poll(T0) == ([], [], us(1_000))


def test_max_queue_size_raises_queue_full_per_level():
    sched = Scheduler(
        8,
        max_queue_delay_us=1_000,
        priority_levels=2,
        default_priority_level=2,
        default_policy=QueuePolicy(max_queue_size=2),
        priority_policies={1: QueuePolicy(max_queue_size=1)},
    )
    add(sched, "a")
    add(sched, "b")
    with pytest.raises(QueueFull, match="priority level 2 is full"):
        add(sched, "c")
    add(sched, "h1", priority=1)
    with pytest.raises(QueueFull, match="priority level 1 is full"):
        add(sched, "h2", priority=1)
    assert issubclass(QueueFull, Exception)
    assert sched.size == 3
    assert sched.poll(us(1_000)) == (["h1", "a", "b"], [], INF)
    add(sched, "c")


def test_deadline_expires_with_reason_deadline():
    sched = Scheduler(8, max_queue_delay_us=1_000)
    add(sched, "a", deadline=us(300))
    add(sched, "b")
    assert sched.poll(T0) == ([], [], us(300))
    assert sched.poll(us(300)) == ([], [("a", "deadline")], us(1_000))
    assert sched.poll(us(1_000)) == (["b"], [], INF)


def test_deadline_wins_over_a_queue_timeout_at_the_same_time():
    sched = Scheduler(8, max_queue_delay_us=10_000, default_policy=QueuePolicy(default_timeout_us=300))
    add(sched, "a", deadline=us(300))
    assert sched.poll(us(300)) == ([], [("a", "deadline")], INF)


def test_expired_and_batch_come_back_together():
    sched = Scheduler(2, max_queue_delay_us=1_000)
    add(sched, "a", deadline=us(100))
    add(sched, "b")
    add(sched, "c")
    assert sched.poll(us(100)) == (["b", "c"], [("a", "deadline")], INF)


def test_cancel():
    sched = Scheduler(8, max_queue_delay_us=1_000)
    a, b, c = object(), object(), object()
    add(sched, a, rows=2)
    add(sched, b, rows=3, deadline=us(200))
    add(sched, c, rows=1)
    assert sched.cancel(b) is True
    assert sched.cancel(b) is False
    assert (sched.size, sched.rows) == (2, 3)
    # b's deadline no longer matters.
    assert sched.poll(T0) == ([], [], us(1_000))
    assert sched.poll(us(1_000)) == ([a, c], [], INF)
    assert sched.cancel(a) is False
    assert sched.cancel(object()) is False


def test_an_item_is_queued_once_at_a_time():
    sched = Scheduler(8, max_queue_delay_us=1_000)
    add(sched, "a")
    with pytest.raises(ValueError, match="already queued"):
        add(sched, "a")
    sched.poll(us(1_000))
    add(sched, "a")  # taken: may come again


def test_close_refuses_new_work_flushes_and_drain_empties():
    sched = Scheduler(8, max_queue_delay_us=1_000, priority_levels=2, default_priority_level=2)
    add(sched, "a")
    add(sched, "b", shape=(9,))
    add(sched, "h", priority=1)
    sched.close()
    assert sched.closed
    with pytest.raises(RuntimeError, match="^scheduler closed$"):
        add(sched, "c")
    # Closed: nothing can join a batch any more, so there is no reason to wait.
    assert sched.poll(T0) == (["h", "a"], [], T0)
    assert sched.drain() == ["b"]
    assert (sched.size, sched.rows) == (0, 0)
    assert sched.poll(T0) == ([], [], INF)
    assert sched.next_batch() is None


def test_drain_returns_service_order():
    sched = Scheduler(8, max_queue_delay_us=1_000, priority_levels=2, default_priority_level=2)
    for item, priority in [("a", 0), ("b", 1), ("c", 2), ("d", 1)]:
        add(sched, item, priority=priority)
    assert sched.drain() == ["b", "d", "a", "c"]
    assert sched.poll(T0) == ([], [], INF)


def test_queue_policy_validation():
    with pytest.raises(ValueError, match="timeout_action must be 'REJECT' or 'DELAY'"):
        QueuePolicy("reject")
    with pytest.raises(ValueError, match="default_timeout_us must be >= 0"):
        QueuePolicy(default_timeout_us=-1)
    policy = QueuePolicy("DELAY", 5, True, 3)
    assert (policy.timeout_action, policy.default_timeout_us) == ("DELAY", 5)
    assert (policy.allow_timeout_override, policy.max_queue_size) == (True, 3)


# -- real threads through next_batch ----------------------------------------------------


def test_next_batch_timeout_returns_empty():
    sched = Scheduler(8)
    started = time.monotonic()
    assert sched.next_batch(timeout=0.05) == ([], [])
    assert 0.04 <= time.monotonic() - started < 2.0


def test_next_batch_uses_the_time_monotonic_clock():
    sched = Scheduler(8, max_queue_delay_us=50_000)
    enqueued = time.monotonic()
    sched.enqueue("a", 1, SHAPE, enqueued)
    assert sched.next_batch(timeout=5.0) == (["a"], [])
    # Dispatched when the delay ran out, not before, and not much later.
    assert 0.05 <= time.monotonic() - enqueued < 1.0


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_a_waiting_worker_wakes_on_enqueue_and_on_close():
    sched = Scheduler(8)
    results = []

    def work():
        results.append(sched.next_batch())
        results.append(sched.next_batch())

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    time.sleep(0.05)
    assert results == []
    sched.enqueue("a", 1, SHAPE, time.monotonic())
    assert wait_for(lambda: len(results) == 1), "enqueue did not wake the worker"
    time.sleep(0.02)
    sched.close()
    worker.join(timeout=5)
    assert not worker.is_alive(), "close did not wake the worker"
    assert results == [(["a"], []), None]


def _worker(sched, results):
    worker = threading.Thread(target=lambda: results.append(sched.next_batch()), daemon=True)
    worker.start()
    return worker


def test_a_request_of_another_shape_sends_the_batch_ahead_of_it_at_once():
    """Triton's test_multi_batch_not_preferred_different_shape: 1 + 3 rows (not a
    preferred size) wait for the delay until a request of another shape arrives; that
    batch cannot grow any more, so it goes at once, and the newcomer waits its own."""
    sched = Scheduler(8, preferred_batch_sizes=(2, 6), max_queue_delay_us=60_000_000)
    now = time.monotonic()
    sched.enqueue("a", 1, (16,), now)
    sched.enqueue("b", 3, (16,), now)
    results = []
    worker = _worker(sched, results)
    time.sleep(0.05)
    assert results == []
    sched.enqueue("c", 1, (8,), time.monotonic())
    worker.join(timeout=5)
    assert results == [(["a", "b"], [])]
    assert sched.size == 1


def test_flush_sends_what_is_queued_as_one_batch_at_once():
    sched = Scheduler(8, preferred_batch_sizes=(2, 6), max_queue_delay_us=60_000_000)
    assert sched.flush() is False  # nothing queued: nothing to do
    now = time.monotonic()
    for item in "abc":
        sched.enqueue(item, 1, SHAPE, now)
    assert sched.poll(now) == (["a", "b"], [], now)  # the preferred size, as always
    results = []
    worker = _worker(sched, results)
    time.sleep(0.05)
    assert results == []  # "c" alone waits for the delay...
    assert sched.flush() is True  # ...until the caller knows nothing will join it
    worker.join(timeout=5)
    assert results == [(["c"], [])]


def test_hold_until_dispatches_nothing_before_that_many_are_queued_once():
    sched = Scheduler(8, max_queue_delay_us=0, hold_until=3)
    now = time.monotonic()
    sched.enqueue("a", 1, SHAPE, now)
    sched.enqueue("b", 1, SHAPE, now)
    assert sched.poll(now)[0] == []  # a zero delay would otherwise send them at once
    results = []
    worker = _worker(sched, results)
    time.sleep(0.05)
    assert results == []
    sched.enqueue("c", 1, SHAPE, time.monotonic())
    worker.join(timeout=5)
    assert results == [(["a", "b", "c"], [])]
    sched.enqueue("d", 1, SHAPE, time.monotonic())  # the hold is over: as usual again
    assert sched.poll(time.monotonic())[0] == ["d"]
    with pytest.raises(ValueError, match="hold_until"):
        Scheduler(8, hold_until=-1)


def test_close_flushes_queued_work_without_waiting_for_the_delay():
    sched = Scheduler(8, max_queue_delay_us=60_000_000)
    sched.enqueue("a", 1, SHAPE, time.monotonic())
    results = []
    worker = threading.Thread(target=lambda: results.append(sched.next_batch()), daemon=True)
    worker.start()
    time.sleep(0.02)
    sched.close()
    worker.join(timeout=5)
    assert results == [(["a"], [])]
    assert sched.next_batch() is None


def test_workers_deliver_every_item_exactly_once():
    max_batch = 8
    sched = Scheduler(max_batch, preferred_batch_sizes=(4,), max_queue_delay_us=200)
    rng = random.Random(1234)
    plan = [(rng.randint(1, 4), rng.choice(["x", "y"])) for _ in range(2_000)]
    batches = []
    errors = []

    def work():
        try:
            while (result := sched.next_batch()) is not None:
                batch, expired = result
                assert expired == []
                batches.append(batch)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(3)]
    for worker in workers:
        worker.start()
    for item, (rows, shape) in enumerate(plan):
        sched.enqueue(item, rows, shape, time.monotonic())
        if item % 97 == 0:
            time.sleep(0.001)
    # Everything must go out while the scheduler is open: close() wakes every worker,
    # which would hide a lost wake-up.
    delivered_all = wait_for(lambda: sum(map(len, batches)) >= len(plan), timeout=10)
    sched.close()
    for worker in workers:
        worker.join(timeout=10)
    assert not any(worker.is_alive() for worker in workers), "a worker hung"
    assert errors == []
    assert delivered_all, "items stranded in the queue while workers slept"

    delivered = sorted(item for batch in batches for item in batch)
    assert delivered == list(range(len(plan)))
    for batch in batches:
        assert batch
        assert sum(plan[item][0] for item in batch) <= max_batch
        assert len({plan[item][1] for item in batch}) == 1
        assert batch == sorted(batch)  # FIFO within a batch
    assert (sched.size, sched.rows) == (0, 0)
