# cython: language_level=3
"""Native core of the dynamic batcher: the request queue and the batch gather.

``Scheduler`` holds the queued requests of one model version and decides, the way
Triton's dynamic batcher does, which of them run together: priority levels served
highest first, FIFO within a level, one shape per batch, preferred batch sizes, a
maximum queue delay, per-level queue policies (timeout REJECT / DELAY, max queue size)
and per-request deadlines. ``poll(now)`` is the pure decision, driven by any clock;
``next_batch()`` is the blocking call that model instance worker threads make.

``gather`` copies the input rows of a batch into one preallocated contiguous buffer.
Outputs are scattered by the caller with numpy views, which copy nothing.

Locking. The event loop thread must never block here, so the common paths are
lock-free and the mutex is only for sleeping and waking:
  * ``_busy`` is a flag lock over the Python-object queue data (deques, heap, dict),
    taken by compare-and-swap with the GIL held, and waited for (rarely) with the GIL
    released. The GIL alone is not enough: any allocation can run the cyclic GC, whose
    finalizers run Python code that may hand the GIL to another thread mid-update.
  * ``_generation``, ``_waiters`` and ``_busy_waiters`` are atomics (sequentially
    consistent). Whoever changes the queue bumps ``_generation`` and takes ``_mutex``
    only if a worker is asleep, to signal it. A sleeper registers in ``_waiters`` under
    ``_mutex`` and then rechecks ``_generation``: with sequential consistency either the
    waker sees the sleeper or the sleeper sees the new generation (no lost wake-up).
  * ``_mutex`` is held for a few C statements, never while Python code runs, and the
    GIL is never taken while it is held. Lock order: GIL -> mutex.
Waiting workers sleep on a condition variable bound to CLOCK_MONOTONIC (the clock of
``time.monotonic()``) with the GIL released; a worker reads the generation in the same
critical section as its poll and sleeps only while it is unchanged.
"""

cimport cython
cimport numpy as cnp
from libc.errno cimport ETIMEDOUT
from libc.math cimport INFINITY, floor
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from batcher cimport (
    tg_add_int,
    tg_cas_int,
    tg_inc_u64,
    tg_load_int,
    tg_load_u64,
    tg_store_int,
    pthread_cond_broadcast,
    pthread_cond_destroy,
    pthread_cond_init,
    pthread_cond_signal,
    pthread_cond_t,
    pthread_cond_timedwait,
    pthread_cond_wait,
    pthread_condattr_destroy,
    pthread_condattr_init,
    pthread_condattr_setclock,
    pthread_condattr_t,
    pthread_mutex_destroy,
    pthread_mutex_init,
    pthread_mutex_lock,
    pthread_mutex_t,
    pthread_mutex_unlock,
)

from collections import deque
from heapq import heapify, heappop, heappush

cnp.import_array()

__all__ = ["QueueFull", "QueuePolicy", "Scheduler", "gather"]

cdef enum:
    # Copies smaller than this keep the GIL: giving it up and taking it back can cost
    # more than the copy, up to the interpreter's switch interval while the event loop
    # thread is busy running Python.
    _NOGIL_MIN_BYTES = 65536

cdef enum:
    # _Entry.state
    _QUEUED = 0
    _TAKEN = 1
    _CANCELLED = 2
    _EXPIRED = 3

cdef enum:
    # Expiry record kinds; at equal times a deadline is reported before a queue timeout.
    _DEADLINE = 0
    _TIMEOUT = 1

cdef enum:
    # _release(notify)
    _NOTIFY_NONE = 0
    _NOTIFY_ONE = 1
    _NOTIFY_ALL = 2


class QueueFull(Exception):
    """The request's priority level already holds its policy's max_queue_size requests."""


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline bint _live(_Entry entry, bint in_fifo) noexcept:
    # An entry moved to its level's delayed queue leaves a stale reference in the FIFO.
    return entry.state == _QUEUED and entry.delayed != in_fifo


cdef class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level.

    timeout_action: "REJECT" (expire the request) or "DELAY" (move it behind every
    request of its level that has not timed out). default_timeout_us: queue timeout,
    0 = none. allow_timeout_override: honour the request's own timeout. max_queue_size:
    0 = unlimited.
    """

    cdef readonly str timeout_action
    cdef readonly long long default_timeout_us
    cdef readonly bint allow_timeout_override
    cdef readonly Py_ssize_t max_queue_size
    cdef bint _reject

    def __init__(
        self,
        str timeout_action="REJECT",
        long long default_timeout_us=0,
        bint allow_timeout_override=False,
        Py_ssize_t max_queue_size=0,
    ):
        if timeout_action not in ("REJECT", "DELAY"):
            raise ValueError(
                f"timeout_action must be 'REJECT' or 'DELAY', got {timeout_action!r}"
            )
        if default_timeout_us < 0:
            raise ValueError(f"default_timeout_us must be >= 0, got {default_timeout_us}")
        if max_queue_size < 0:
            raise ValueError(f"max_queue_size must be >= 0, got {max_queue_size}")
        self.timeout_action = timeout_action
        self.default_timeout_us = default_timeout_us
        self.allow_timeout_override = allow_timeout_override
        self.max_queue_size = max_queue_size
        self._reject = timeout_action == "REJECT"

    def __repr__(self):
        return (
            f"QueuePolicy(timeout_action={self.timeout_action!r}, "
            f"default_timeout_us={self.default_timeout_us}, "
            f"allow_timeout_override={bool(self.allow_timeout_override)}, "
            f"max_queue_size={self.max_queue_size})"
        )


@cython.freelist(256)
@cython.final
cdef class _Entry:
    cdef object item
    cdef object shape_key
    cdef long long rows
    cdef double enqueued_at
    cdef int level
    cdef int state
    cdef bint delayed


@cython.final
cdef class _Level:
    cdef object fifo        # deque of _Entry, arrival order
    cdef object delayed     # deque of _Entry whose DELAY timeout passed
    cdef QueuePolicy policy
    cdef Py_ssize_t count   # queued requests of this level


cdef class Scheduler:
    """The queue of one model version, with Triton's dynamic batching rules.

    Times are time.monotonic() seconds. See the module docstring for the locking.
    """

    # configuration
    cdef readonly long long max_batch_size
    cdef readonly tuple preferred_batch_sizes
    cdef readonly long long max_queue_delay_us
    cdef readonly int priority_levels
    cdef readonly int default_priority_level
    cdef readonly bint batching
    cdef long long _max_preferred
    cdef double _delay_s
    cdef frozenset _preferred_set
    cdef list _levels           # _Level, highest priority first
    cdef list _queues           # service order: level 1 fifo, level 1 delayed, level 2 ...

    # queue data: Python objects, touched only with the GIL and _busy held
    cdef dict _entries          # id(item) -> _Entry, queued entries only
    cdef list _expiry           # heap of (time, kind, seq, _Entry)
    cdef unsigned long long _seq
    cdef Py_ssize_t _size
    cdef long long _rows

    # C state guarded by _mutex
    cdef pthread_mutex_t _mutex
    cdef pthread_cond_t _wakeup   # workers in next_batch; CLOCK_MONOTONIC
    cdef pthread_cond_t _idle     # threads waiting for _busy
    cdef bint _sync_ready
    cdef int _busy                # flag lock over the queue data; atomic
    cdef int _busy_waiters        # atomic
    cdef int _waiters             # workers asleep in _wait; atomic
    cdef unsigned long long _generation   # atomic
    cdef bint _closed
    cdef bint _flush              # dispatch without waiting out the delay, until empty
    cdef Py_ssize_t _hold         # dispatch nothing until this many are queued (once)
    # Rows of the open window sent before it closed (see _poll): how many, when the
    # window opened, their shape.
    cdef long long _early_rows
    cdef double _early_since
    cdef object _early_shape_key
    cdef object _last_shape_key   # shape_key of the last request queued
    # Group mode (variable-length batching): a batch takes the queued requests of the
    # head's shape_key wherever they are in the queue, not only the head's run.
    cdef readonly bint group_by_shape

    def __cinit__(self, *args, **kwargs):
        cdef pthread_condattr_t attr
        if pthread_mutex_init(&self._mutex, NULL) != 0:
            raise MemoryError("pthread_mutex_init failed")
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        if pthread_cond_init(&self._wakeup, &attr) != 0:
            pthread_condattr_destroy(&attr)
            pthread_mutex_destroy(&self._mutex)
            raise MemoryError("pthread_cond_init failed")
        pthread_condattr_destroy(&attr)
        if pthread_cond_init(&self._idle, NULL) != 0:
            pthread_cond_destroy(&self._wakeup)
            pthread_mutex_destroy(&self._mutex)
            raise MemoryError("pthread_cond_init failed")
        self._sync_ready = True

    def __dealloc__(self):
        # No thread can be inside a method: each call holds a reference to self.
        if self._sync_ready:
            pthread_cond_destroy(&self._idle)
            pthread_cond_destroy(&self._wakeup)
            pthread_mutex_destroy(&self._mutex)

    def __init__(
        self,
        long long max_batch_size,
        preferred_batch_sizes=(),
        long long max_queue_delay_us=0,
        int priority_levels=0,
        int default_priority_level=0,
        QueuePolicy default_policy=None,
        dict priority_policies=None,
        bint batching=True,
        Py_ssize_t hold_until=0,
        bint group_by_shape=False,
    ):
        cdef _Level level
        cdef int number
        if max_batch_size < 0 or (batching and max_batch_size < 1):
            raise ValueError(
                f"max_batch_size must be >= {1 if batching else 0}"
                f"{' when batching' if batching else ''}, got {max_batch_size}"
            )
        preferred = tuple(sorted({int(size) for size in preferred_batch_sizes}))
        for size in preferred:
            if not 1 <= size <= max_batch_size:
                raise ValueError(
                    f"preferred batch size {size} is outside 1..{max_batch_size}"
                )
        if max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")
        if priority_levels < 0:
            raise ValueError(f"priority_levels must be >= 0, got {priority_levels}")
        if hold_until < 0:
            raise ValueError(f"hold_until must be >= 0, got {hold_until}")
        if priority_levels == 0 and default_priority_level != 0:
            raise ValueError(
                f"default_priority_level must be 0 without priority levels, "
                f"got {default_priority_level}"
            )
        if priority_levels > 0 and not 1 <= default_priority_level <= priority_levels:
            raise ValueError(
                f"default_priority_level must be in 1..{priority_levels}, "
                f"got {default_priority_level}"
            )
        if default_policy is None:
            default_policy = QueuePolicy()
        policies = priority_policies or {}
        for number, policy in policies.items():
            if not 1 <= number <= priority_levels:
                raise ValueError(
                    f"priority_policies has level {number}, levels are 1..{priority_levels}"
                )
            if not isinstance(policy, QueuePolicy):
                raise TypeError(
                    f"priority_policies[{number}] is {type(policy).__name__}, "
                    f"not a QueuePolicy"
                )

        self.max_batch_size = max_batch_size
        self.preferred_batch_sizes = preferred
        self.max_queue_delay_us = max_queue_delay_us
        self.priority_levels = priority_levels
        self.default_priority_level = default_priority_level
        self.batching = batching
        self.group_by_shape = group_by_shape
        self._preferred_set = frozenset(preferred)
        self._max_preferred = max(preferred) if preferred else max_batch_size
        self._delay_s = max_queue_delay_us / 1e6
        self._levels = []
        self._queues = []
        for number in range(1, max(priority_levels, 1) + 1):
            level = _Level.__new__(_Level)
            level.fifo = deque()
            level.delayed = deque()
            level.policy = policies.get(number, default_policy)
            level.count = 0
            self._levels.append(level)
            # Service order: a level's FIFO, then its timed-out DELAY requests.
            self._queues.append(level.fifo)
            self._queues.append(level.delayed)
        self._entries = {}
        self._expiry = []
        self._seq = 0
        self._size = 0
        self._rows = 0
        self._hold = hold_until
        self._last_shape_key = None
        self._early_rows = 0
        self._early_since = 0.0
        self._early_shape_key = None

    # -- synchronisation -------------------------------------------------------------

    cdef int _acquire(self) except -1:
        # Fast path with the GIL: one compare-and-swap, no mutex.
        if tg_cas_int(&self._busy, 0, 1):
            return 0
        with nogil:
            pthread_mutex_lock(&self._mutex)
            tg_add_int(&self._busy_waiters, 1)
            while not tg_cas_int(&self._busy, 0, 1):
                pthread_cond_wait(&self._idle, &self._mutex)
            tg_add_int(&self._busy_waiters, -1)
            pthread_mutex_unlock(&self._mutex)
        return 0

    cdef void _release(self, int notify) noexcept:
        tg_store_int(&self._busy, 0)
        if tg_load_int(&self._busy_waiters):
            pthread_mutex_lock(&self._mutex)
            pthread_cond_signal(&self._idle)
            pthread_mutex_unlock(&self._mutex)
        if notify != _NOTIFY_NONE:
            tg_inc_u64(&self._generation)
            if tg_load_int(&self._waiters):
                pthread_mutex_lock(&self._mutex)
                if notify == _NOTIFY_ALL:
                    pthread_cond_broadcast(&self._wakeup)
                else:
                    pthread_cond_signal(&self._wakeup)
                pthread_mutex_unlock(&self._mutex)

    cdef unsigned long long _read_generation(self) noexcept:
        return tg_load_u64(&self._generation)

    cdef void _wait(self, unsigned long long generation, double wake_at) noexcept nogil:
        cdef timespec ts
        cdef double seconds
        if wake_at != INFINITY:
            seconds = floor(wake_at)
            ts.tv_sec = <long>seconds
            ts.tv_nsec = <long>((wake_at - seconds) * 1e9)
            if ts.tv_nsec >= 1000000000:
                ts.tv_nsec = 999999999
            elif ts.tv_nsec < 0:
                ts.tv_nsec = 0
        pthread_mutex_lock(&self._mutex)
        tg_add_int(&self._waiters, 1)
        while tg_load_u64(&self._generation) == generation:
            if wake_at == INFINITY:
                pthread_cond_wait(&self._wakeup, &self._mutex)
            elif pthread_cond_timedwait(&self._wakeup, &self._mutex, &ts) == ETIMEDOUT:
                break
        tg_add_int(&self._waiters, -1)
        pthread_mutex_unlock(&self._mutex)

    # -- queue bookkeeping (GIL and _busy held) --------------------------------------

    cdef object _forget(self, _Entry entry, int state):
        """Take a queued entry out of the books; return its item. References left in
        the deques and the expiry heap go stale and are dropped lazily."""
        item = entry.item
        entry.state = state
        self._size -= 1
        self._rows -= entry.rows
        (<_Level>self._levels[entry.level]).count -= 1
        del self._entries[id(item)]
        entry.item = None
        entry.shape_key = None
        return item

    cdef list _expire(self, double now):
        cdef list expired = []
        cdef list heap = self._expiry
        cdef _Entry entry
        cdef _Level level
        cdef tuple record
        while heap and (<tuple>heap[0])[0] <= now:
            record = heappop(heap)
            entry = record[3]
            if entry.state != _QUEUED:
                continue
            if record[1] == _DEADLINE:
                expired.append((self._forget(entry, _EXPIRED), "deadline"))
                continue
            if entry.delayed:
                continue
            level = self._levels[entry.level]
            if level.policy._reject:
                expired.append((self._forget(entry, _EXPIRED), "timeout"))
            else:
                entry.delayed = True
                level.delayed.append(entry)
        return expired

    cdef int _drop_stale_heads(self) except -1:
        cdef Py_ssize_t index
        for index in range(len(self._queues)):
            queue = self._queues[index]
            while queue and not _live(queue[0], (index & 1) == 0):
                queue.popleft()
        return 0

    cdef double _earliest_expiry(self) except? -1.0:
        cdef list heap = self._expiry
        cdef tuple record
        cdef _Entry entry
        while heap:
            record = heap[0]
            entry = record[3]
            if entry.state == _QUEUED and not (record[1] == _TIMEOUT and entry.delayed):
                return record[0]
            heappop(heap)
        return INFINITY

    cdef list _take_shape(self, Py_ssize_t count, object shape_key):
        """The first ``count`` live entries of ``shape_key``, in service order. The
        others stay queued; taken entries left in a deque are skipped as not live and
        dropped once they reach its head."""
        cdef list batch = []
        cdef Py_ssize_t index
        cdef bint in_fifo
        cdef _Entry entry
        for index in range(len(self._queues)):
            in_fifo = (index & 1) == 0
            for entry in self._queues[index]:
                if len(batch) >= count:
                    break
                if _live(entry, in_fifo) and entry.shape_key == shape_key:
                    batch.append(entry)
            if len(batch) >= count:
                break
        return [self._forget(entry, _TAKEN) for entry in batch]

    cdef list _take(self, Py_ssize_t count):
        cdef list batch = []
        cdef Py_ssize_t index = 0
        cdef Py_ssize_t nqueues = len(self._queues)
        cdef bint in_fifo
        cdef _Entry entry
        while len(batch) < count and index < nqueues:
            queue = self._queues[index]
            in_fifo = (index & 1) == 0
            while queue and len(batch) < count:
                entry = queue.popleft()
                if _live(entry, in_fifo):
                    batch.append(self._forget(entry, _TAKEN))
            index += 1
        return batch

    cdef tuple _poll(self, double now):
        """Expire, then decide (Triton's GetDynamicBatch). The run is the longest
        prefix of the queue, in service order, with one shape_key and at most
        max_batch_size rows. Its best cut is the last prefix whose rows are a preferred
        size, or, if none, the prefix before the run grows past the largest preferred
        size. Until the queue delay of the run's oldest request has passed, send the
        best cut if there is one; send the whole run if it cannot grow (the next
        request does not fit or has another shape, or it reached max_batch_size or the
        largest preferred size), or if the delay is 0 or has passed; otherwise wait.

        Rows sent ahead of their window (a flush, or a run on the caller's thread, see
        note_early) still count for it: Triton would have held them, so the requests
        that follow within that window and of that shape are decided as if those rows
        were queued ahead of them, and wait no longer than that window's end."""
        cdef list expired = self._expire(now)
        cdef Py_ssize_t index, count = 0, best = 0, take
        cdef long long total = 0, grown, carry = 0, best_total = 0, taken_rows
        cdef double oldest = INFINITY, wake_at
        cdef bint in_fifo, stopped = False, passed, forced, early = False
        cdef _Entry entry
        cdef object shape_key = None
        cdef double earliest
        self._drop_stale_heads()
        if self._size == 0:
            return [], expired, INFINITY
        if self._hold:
            if self._size < self._hold and not self._closed:
                return [], expired, self._earliest_expiry()  # enqueue wakes the worker
            self._hold = 0
            self._flush = False  # said by a request that was alone before the hold ended
        carry = self._early_rows

        # The run: from the head, in service order, the requests that can share a batch.
        for index in range(len(self._queues)):
            in_fifo = (index & 1) == 0
            for entry in self._queues[index]:
                if not _live(entry, in_fifo):
                    continue
                if count == 0:
                    shape_key = entry.shape_key
                    if carry:
                        grown = carry + entry.rows
                        if (entry.enqueued_at > self._early_since + self._delay_s
                                or grown > self._max_preferred or grown > self.max_batch_size
                                or not (shape_key == self._early_shape_key)):
                            # It arrived after the early rows' window, or cannot join
                            # their batch: that batch is complete without it.
                            carry = 0
                            self._early_rows = 0
                        else:
                            total = carry
                            oldest = self._early_since
                else:
                    if not self.batching:
                        stopped = True
                        break
                    grown = total + entry.rows
                    # Growing past every preferred size: the run so far is the batch
                    # to send unless the queue delay has run out.
                    if grown > self._max_preferred and best == 0:
                        best = count
                        best_total = total
                    if not (entry.shape_key == shape_key):
                        if self.group_by_shape:
                            continue  # another length bucket: it waits for its own batch
                        stopped = True
                        break
                    if grown > self.max_batch_size:
                        stopped = True
                        break
                count += 1
                total += entry.rows
                if entry.enqueued_at < oldest:
                    oldest = entry.enqueued_at
                if total in self._preferred_set:
                    best = count
                    best_total = total
                if total == self.max_batch_size:
                    stopped = True
                    break
            if stopped:
                break

        taken_rows = total
        if not self.batching:
            take = 1
        else:
            passed = self._delay_s > 0 and now >= oldest + self._delay_s
            # After close() nothing can join, so waiting is pointless: flush.
            forced = self._closed or self._flush
            if best > 0 and not (forced or passed):
                take = best
                taken_rows = best_total
            elif stopped or passed or self._delay_s == 0 or total >= self._max_preferred:
                take = count
            elif forced:
                take = count
                early = True
            else:
                take = 0
        if take == 0:
            wake_at = oldest + self._delay_s
            earliest = self._earliest_expiry()
            if earliest < wake_at:
                wake_at = earliest
            return [], expired, wake_at
        batch = self._take_shape(take, shape_key) if self.group_by_shape else self._take(take)
        if early:
            self._remember_early(taken_rows, oldest, shape_key)
        elif carry:
            self._early_rows = 0  # the early rows' batch went out complete
        if self._size == 0:
            self._flush = False
        return batch, expired, (now if self._size > 0 else INFINITY)

    cdef void _remember_early(self, long long rows, double since, object shape_key):
        """Rows of one window sent before it closed (``rows`` include any carried)."""
        if rows in self._preferred_set or rows >= self._max_preferred or self._delay_s <= 0:
            self._early_rows = 0  # a batch Triton would have sent at that size
            return
        self._early_rows = rows
        self._early_since = since
        self._early_shape_key = shape_key

    # -- public API ------------------------------------------------------------------

    def enqueue(
        self,
        object item,
        long long rows,
        object shape_key,
        double now,
        int priority=0,
        long long timeout_us=0,
        double deadline=0.0,
        bint flush=False,
    ):
        """Queue one request. Raises QueueFull when its level is full, ValueError on
        bad arguments, RuntimeError after close().

        flush=True says nothing else is about to arrive (the caller knows no other
        request is on its way to this queue): what is queued is dispatched without
        waiting out max_queue_delay, so an idle server answers a lone request at once."""
        cdef _Entry entry
        cdef _Level level
        cdef int level_index
        cdef long long timeout
        cdef int notify = _NOTIFY_NONE
        cdef bint reshaped
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        if 0 < self.max_batch_size < rows:
            raise ValueError(
                f"request of {rows} rows exceeds max_batch_size {self.max_batch_size}"
            )
        if timeout_us < 0:
            raise ValueError(f"timeout_us must be >= 0, got {timeout_us}")
        if priority == 0:
            level_index = self.default_priority_level - 1 if self.priority_levels else 0
        elif 1 <= priority <= self.priority_levels:
            level_index = priority - 1
        elif self.priority_levels == 0:
            raise ValueError(
                f"priority {priority} is out of range: the queue has no priority levels, "
                f"expected 0"
            )
        else:
            raise ValueError(
                f"priority {priority} is out of range: expected 0 (default) "
                f"or 1..{self.priority_levels}"
            )

        self._acquire()
        try:
            if self._closed:
                raise RuntimeError("scheduler closed")
            level = self._levels[level_index]
            policy = level.policy
            if policy.max_queue_size and level.count >= policy.max_queue_size:
                raise QueueFull(
                    f"queue of priority level {level_index + 1} is full "
                    f"({policy.max_queue_size} requests)"
                )
            key = id(item)
            if key in self._entries:
                raise ValueError("item is already queued")
            if policy.allow_timeout_override and timeout_us > 0:
                timeout = timeout_us
            else:
                timeout = policy.default_timeout_us
            entry = _Entry.__new__(_Entry)
            entry.item = item
            entry.shape_key = shape_key
            entry.rows = rows
            entry.enqueued_at = now
            entry.level = level_index
            entry.state = _QUEUED
            entry.delayed = False
            self._entries[key] = entry
            level.fifo.append(entry)
            level.count += 1
            self._size += 1
            self._rows += rows
            self._seq += 1
            if flush:
                self._flush = True
            # A request of another shape cannot join the batch forming ahead of it, so
            # that batch is as large as it will get (Triton sends it at once).
            reshaped = (self._size > 1 and not self.group_by_shape
                        and not (shape_key == self._last_shape_key))
            self._last_shape_key = shape_key
            if deadline > 0:
                heappush(self._expiry, (deadline, _DEADLINE, self._seq, entry))
            if timeout > 0:
                heappush(self._expiry, (now + timeout / 1e6, _TIMEOUT, self._seq, entry))
            if len(self._expiry) > 2 * self._size + 64:
                # Taken and cancelled entries leave stale records: compact now and then.
                self._expiry = [
                    record
                    for record in self._expiry
                    if (<_Entry>record[3]).state == _QUEUED
                    and not (record[1] == _TIMEOUT and (<_Entry>record[3]).delayed)
                ]
                heapify(self._expiry)
            # Wake a worker only when this request can change its decision: a sleeping
            # worker already knows when the oldest request's delay runs out. Every
            # needless wake-up costs the event loop a futex call and, on a busy machine,
            # its core to the woken thread while it holds the GIL.
            if (
                self._size == 1
                or flush
                or reshaped
                or self._early_rows
                or (self._hold and self._size >= self._hold)
                or not self.batching
                or self._delay_s == 0
                or self._closed
                or deadline > 0
                or timeout > 0
                or self._rows >= self._max_preferred
                or self._rows in self._preferred_set
            ):
                notify = _NOTIFY_ONE
        finally:
            self._release(notify)

    def note_early(self, long long rows, object shape_key, double enqueued_at):
        """Record a request of ``rows`` rows that ran without being queued (on the
        caller's thread, the model being idle): it counts for its window as a flushed
        batch does, so the requests that follow it are not held longer than Triton,
        which would have batched them together, would hold them."""
        cdef double since = enqueued_at
        cdef long long total = rows
        if not self.batching or self._delay_s <= 0:
            return
        self._acquire()
        try:
            if (self._early_rows and enqueued_at <= self._early_since + self._delay_s
                    and shape_key == self._early_shape_key):
                total += self._early_rows
                since = self._early_since
            self._remember_early(total, since, shape_key)
        finally:
            self._release(_NOTIFY_NONE)

    def flush(self):
        """Dispatch what is queued now, without waiting out max_queue_delay (as one
        batch where the batching rules allow); the caller knows nothing else is about
        to join it. Returns whether anything was queued."""
        cdef bint queued
        self._acquire()
        try:
            queued = self._size > 0
            if queued:
                self._flush = True
        finally:
            self._release(_NOTIFY_ONE if queued else _NOTIFY_NONE)
        return queued

    def poll(self, double now):
        """Decide at time `now`: (batch_items, [(item, "deadline"|"timeout")], wake_at)."""
        cdef int notify = _NOTIFY_NONE
        self._acquire()
        try:
            result = self._poll(now)
            if (result[0] or result[1]) and self._size > 0:
                notify = _NOTIFY_ONE
            return result
        finally:
            self._release(notify)

    def next_batch(self, double timeout=-1.0):
        """Block (GIL released) until a batch or expired requests are ready and return
        (batch, expired); None once closed and empty; ([], []) when `timeout` seconds
        (if >= 0) pass first."""
        cdef double now, wake_at, end_at = INFINITY
        cdef unsigned long long generation
        cdef int notify
        cdef bint closed
        cdef Py_ssize_t size
        if timeout >= 0:
            end_at = _monotonic() + timeout
        while True:
            notify = _NOTIFY_NONE
            self._acquire()
            try:
                now = _monotonic()
                batch, expired, wake_at = self._poll(now)
                generation = self._read_generation()
                closed = self._closed
                size = self._size
                if (batch or expired) and size > 0:
                    # Other workers may have been sleeping on a wake time that no
                    # longer holds: let one of them look at the rest.
                    notify = _NOTIFY_ONE
            finally:
                self._release(notify)
            if batch or expired:
                return batch, expired
            if closed and size == 0:
                return None
            if now >= end_at:
                return [], []
            if end_at < wake_at:
                wake_at = end_at
            with nogil:
                self._wait(generation, wake_at)

    def cancel(self, object item):
        """Remove a queued item; False if it is not queued (taken, expired, unknown)."""
        cdef bint found = False
        self._acquire()
        try:
            entry = self._entries.get(id(item))
            if entry is not None and (<_Entry>entry).item is item:
                self._forget(entry, _CANCELLED)
                found = True
        finally:
            self._release(_NOTIFY_ONE if found else _NOTIFY_NONE)
        return found

    def close(self):
        """Refuse further enqueues and wake every worker. Queued requests still get
        dispatched (without waiting for the queue delay) unless drain() takes them."""
        self._acquire()
        try:
            pthread_mutex_lock(&self._mutex)
            self._closed = True
            pthread_mutex_unlock(&self._mutex)
        finally:
            self._release(_NOTIFY_ALL)

    def drain(self):
        """Remove and return every queued item, in service order."""
        cdef list items = []
        cdef Py_ssize_t index
        cdef _Entry entry
        self._acquire()
        try:
            for index in range(len(self._queues)):
                queue = self._queues[index]
                for entry in queue:
                    if _live(entry, (index & 1) == 0):
                        items.append(self._forget(entry, _TAKEN))
                queue.clear()
            self._expiry = []
        finally:
            self._release(_NOTIFY_ALL)
        return items

    @property
    def size(self):
        """Queued requests, all levels."""
        return self._size

    @property
    def rows(self):
        """Queued rows, all levels."""
        return self._rows

    @property
    def closed(self):
        return self._closed


def gather(sources, cnp.ndarray out not None):
    """Concatenate C-contiguous arrays along axis 0 into the C-contiguous `out`.

    Returns the number of bytes written. Raises ValueError when a source's dtype or
    trailing shape differs from out's, a source is not C-contiguous, or the rows do
    not fit. Large copies run with the GIL released.
    """
    cdef list arrays = list(sources)
    cdef Py_ssize_t count = len(arrays), index, axis, ndim = cnp.PyArray_NDIM(out)
    cdef Py_ssize_t rows = 0
    cdef size_t total = 0
    cdef cnp.ndarray array
    cdef cnp.npy_intp* dims
    cdef cnp.npy_intp* out_dims = cnp.PyArray_DIMS(out)
    cdef char** pointers
    cdef size_t* sizes
    cdef char* cursor

    if not cnp.PyArray_IS_C_CONTIGUOUS(out):
        raise ValueError("out is not C-contiguous")
    if not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("out is read-only")
    if ndim < 1:
        raise ValueError("out must have at least one dimension")
    cdef object out_obj = out
    if out_obj.dtype.hasobject:
        raise ValueError(f"gather cannot copy arrays of dtype {out_obj.dtype}")
    for index in range(count):
        item = arrays[index]
        if not isinstance(item, cnp.ndarray):
            raise TypeError(f"source {index} is {type(item).__name__}, not numpy.ndarray")
        array = <cnp.ndarray>item
        if not cnp.PyArray_EquivTypes(array.descr, out.descr):
            raise ValueError(
                f"source {index}: dtype {item.dtype} does not match out dtype {out_obj.dtype}"
            )
        dims = cnp.PyArray_DIMS(array)
        if cnp.PyArray_NDIM(array) != ndim:
            raise ValueError(
                f"source {index}: shape {item.shape} does not match "
                f"out.shape[1:] {out_obj.shape[1:]}"
            )
        for axis in range(1, ndim):
            if dims[axis] != out_dims[axis]:
                raise ValueError(
                    f"source {index}: shape {item.shape} does not match "
                    f"out.shape[1:] {out_obj.shape[1:]}"
                )
        if not cnp.PyArray_IS_C_CONTIGUOUS(array):
            raise ValueError(f"source {index} is not C-contiguous")
        rows += dims[0]
    if rows > out_dims[0]:
        raise ValueError(f"sources hold {rows} rows, out has room for {out_dims[0]}")
    return _copy_rows(arrays, <char*>cnp.PyArray_DATA(out))


def gather_bytes(sources, cnp.ndarray out not None):
    """Copy the bytes of C-contiguous arrays of any dtype and shape (None: skipped) one
    after another into the C-contiguous, writable ``out``; the number of bytes written.
    ValueError, before copying, when a source is not C-contiguous or they do not fit.
    What ``gather`` does without requiring one dtype and trailing shape (the prediction
    log's binary columns)."""
    cdef list arrays = [a for a in sources if a is not None]
    cdef Py_ssize_t index
    cdef size_t total = 0
    if not cnp.PyArray_IS_C_CONTIGUOUS(out) or not cnp.PyArray_ISWRITEABLE(out):
        raise ValueError("out must be C-contiguous and writable")
    for index in range(len(arrays)):
        item = arrays[index]
        if not isinstance(item, cnp.ndarray):
            raise TypeError(f"source {index} is {type(item).__name__}, not numpy.ndarray")
        if not cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>item):
            raise ValueError(f"source {index} is not C-contiguous")
        total += <size_t>cnp.PyArray_NBYTES(<cnp.ndarray>item)
    if total > <size_t>cnp.PyArray_NBYTES(out):
        raise ValueError(
            f"sources hold {total} bytes, out has room for {cnp.PyArray_NBYTES(out)}"
        )
    return _copy_rows(arrays, <char*>cnp.PyArray_DATA(out))


cdef size_t _copy_rows(list arrays, char* cursor) except? 0:
    """Copy the (checked) arrays' bytes one after another from ``cursor``; large copies
    with the GIL released (``arrays`` keeps every source alive meanwhile)."""
    cdef Py_ssize_t count = len(arrays), index
    cdef size_t total = 0
    cdef cnp.ndarray array
    if count == 0:
        return 0
    cdef char** pointers = <char**>malloc(count * sizeof(char*))
    cdef size_t* sizes = <size_t*>malloc(count * sizeof(size_t))
    if pointers == NULL or sizes == NULL:
        free(pointers)
        free(sizes)
        raise MemoryError()
    try:
        for index in range(count):
            array = <cnp.ndarray>arrays[index]
            pointers[index] = <char*>cnp.PyArray_DATA(array)
            sizes[index] = <size_t>cnp.PyArray_NBYTES(array)
            total += sizes[index]
        if total >= _NOGIL_MIN_BYTES:
            with nogil:
                for index in range(count):
                    memcpy(cursor, pointers[index], sizes[index])
                    cursor += sizes[index]
        else:
            for index in range(count):
                memcpy(cursor, pointers[index], sizes[index])
                cursor += sizes[index]
    finally:
        free(pointers)
        free(sizes)
    return total
