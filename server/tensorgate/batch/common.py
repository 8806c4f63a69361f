"""What the batch modules share: the error that stops a run before any work, and
atomic file replacement (tensorgate.fileio)."""

from __future__ import annotations

from tensorgate.fileio import atomic_write, atomic_write_bytes, fsync_dir  # noqa: F401


class BatchError(Exception):
    """A problem with the job itself (arguments, inputs, model): the run stops at once
    with this message, which names what is wrong."""
