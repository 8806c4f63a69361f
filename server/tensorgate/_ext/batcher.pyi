"""Type stub for tensorgate._ext.batcher (ext/batcher.pyx): the dynamic batcher's queue
and the batch gather."""

from typing import Any, Hashable, Literal, Sequence

import numpy

__all__ = ["QueueFull", "QueuePolicy", "Scheduler", "gather"]

class QueueFull(Exception):
    """The request's priority level already holds its policy's max_queue_size requests."""

class QueuePolicy:
    """Triton's ModelQueuePolicy for one priority level (0 = no timeout / unlimited)."""

    @property
    def timeout_action(self) -> Literal["REJECT", "DELAY"]: ...
    @property
    def default_timeout_us(self) -> int: ...
    @property
    def allow_timeout_override(self) -> bool: ...
    @property
    def max_queue_size(self) -> int: ...
    def __init__(
        self,
        timeout_action: Literal["REJECT", "DELAY"] = "REJECT",
        default_timeout_us: int = 0,
        allow_timeout_override: bool = False,
        max_queue_size: int = 0,
    ) -> None: ...

class Scheduler:
    """The queue of one model version, with Triton's dynamic batching rules.

    Times are time.monotonic() seconds. Thread-safe; next_batch() waits with the GIL
    released.
    """

    @property
    def max_batch_size(self) -> int: ...
    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]: ...
    @property
    def max_queue_delay_us(self) -> int: ...
    @property
    def priority_levels(self) -> int: ...
    @property
    def default_priority_level(self) -> int: ...
    @property
    def batching(self) -> bool: ...
    @property
    def group_by_shape(self) -> bool: ...
    @property
    def size(self) -> int:
        """Queued requests, all levels."""
    @property
    def rows(self) -> int:
        """Queued rows, all levels."""
    @property
    def closed(self) -> bool: ...
    def __init__(
        self,
        max_batch_size: int,
        preferred_batch_sizes: Sequence[int] = (),
        max_queue_delay_us: int = 0,
        priority_levels: int = 0,
        default_priority_level: int = 0,
        default_policy: QueuePolicy | None = None,
        priority_policies: dict[int, QueuePolicy] | None = None,
        batching: bool = True,
        hold_until: int = 0,
        group_by_shape: bool = False,
    ) -> None:
        """hold_until > 0: dispatch nothing until that many requests are queued, once
        (Triton's TRITONSERVER_DELAY_SCHEDULER test hook). group_by_shape: a batch
        takes the head's shape_key from anywhere in the queue, skipping other keys
        (variable-length batching: one length bucket per batch)."""
    def enqueue(
        self,
        item: object,
        rows: int,
        shape_key: Hashable,
        now: float,
        priority: int = 0,
        timeout_us: int = 0,
        deadline: float = 0.0,
        flush: bool = False,
    ) -> None:
        """Queue one request (each item at most once at a time). Raises QueueFull when
        its level is full, ValueError on bad arguments (rows < 1 or > max_batch_size,
        priority out of range, item already queued), RuntimeError after close()."""
    def flush(self) -> bool:
        """Dispatch what is queued now, without waiting out max_queue_delay; False
        when nothing was queued."""
    def poll(
        self, now: float
    ) -> tuple[list[Any], list[tuple[Any, Literal["deadline", "timeout"]]], float]:
        """The decision at `now`: (batch, expired, wake_at). `batch` is [] while the
        scheduler should wait; wake_at is when to poll again if nothing arrives: `now`
        when a batch was taken and requests remain, inf when the queue is empty."""
    def next_batch(
        self, timeout: float = -1.0
    ) -> tuple[list[Any], list[tuple[Any, Literal["deadline", "timeout"]]]] | None:
        """Block until a batch or expired requests are ready. None once closed and
        empty; ([], []) when `timeout` (>= 0) seconds pass first."""
    def cancel(self, item: object) -> bool:
        """Remove a queued item; False if it is not queued."""
    def close(self) -> None:
        """Refuse further enqueues and wake every worker; what is queued is still
        dispatched, without waiting for the queue delay, unless drain() takes it."""
    def drain(self) -> list[Any]:
        """Remove and return every queued item, in service order."""

def gather(sources: Sequence[numpy.ndarray], out: numpy.ndarray) -> int:
    """Concatenate C-contiguous arrays along axis 0 into the C-contiguous `out`;
    return the number of bytes written."""

def gather_bytes(sources: Sequence[numpy.ndarray | None], out: numpy.ndarray) -> int:
    """Copy the bytes of C-contiguous arrays of any dtype and shape (None: skipped) one
    after another into `out`; return the number of bytes written."""
