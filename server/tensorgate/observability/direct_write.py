"""Whole files made in reused memory and written past the page cache where possible.

The prediction log builds each Parquet file in a page-aligned anonymous mapping taken
from here and hands it back to be written. Two costs are avoided that way, both measured
on the 2-core VM the benchmarks run on (bench/results/2026-12-06-prediction-log/):

- a buffered write() makes the kernel copy every byte into fresh page-cache pages:
  0.5-2 ms of system time per MiB (512 MiB: 0.25-1.0 s), against 0.01-0.03 s with
  O_DIRECT, which sends the pages from our own memory;
- memory freshly mapped for each file costs a page fault per 4 KiB on first touch;
  a mapping reused from file to file costs none after the first.

O_DIRECT wants the memory, the file offset and the length aligned to the device's block:
a mapping is page-aligned, the last block is padded with zeros and the file truncated to
its length. Where the file system refuses O_DIRECT or the platform has none, the file is
written the usual way.
"""

from __future__ import annotations

import errno
import mmap
import os

ALIGN = 4096  # a multiple of every logical block size in use (512, 4096)


class DirectWriter:
    """Mappings to make files in, and the writing of them; used by one thread."""

    def __init__(self, spare: int = 2) -> None:
        self._free: list[mmap.mmap] = []
        self._spare = spare  # mappings kept for the next files
        # False once the file system refused O_DIRECT: not tried again.
        self.direct = hasattr(os, "O_DIRECT")

    def mapping(self, capacity: int) -> mmap.mmap:
        """A page-aligned mapping of at least ``capacity`` bytes, a whole number of
        blocks (so a file of any length up to its size has room for its padding); a
        reused one when one is big enough."""
        for i, mapped in enumerate(self._free):
            if len(mapped) >= capacity:
                return self._free.pop(i)
        return mmap.mmap(-1, -(-capacity // ALIGN) * ALIGN)

    def release(self, mapped: mmap.mmap) -> None:
        """Done with ``mapped`` (nothing may still view it)."""
        if len(self._free) < self._spare:
            self._free.append(mapped)
            return
        try:
            mapped.close()
        except BufferError:  # still viewed somewhere: freed with the last view
            pass

    def write_file(self, path, mapped: mmap.mmap, length: int) -> None:
        """The first ``length`` bytes of ``mapped`` as the new file ``path``, fsynced."""
        view = memoryview(mapped)
        try:
            if self.direct and self._write_direct(path, view, length):
                return
            with open(path, "wb") as f:
                f.write(view[:length])
                f.flush()
                os.fsync(f.fileno())
        finally:
            view.release()

    def _write_direct(self, path, view: memoryview, length: int) -> bool:
        """False when the file system refuses O_DIRECT (nothing useful written)."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False
            return False
        try:
            aligned = -(-length // ALIGN) * ALIGN
            view[length:aligned] = bytes(aligned - length)  # padding, truncated away below
            written = 0
            while written < aligned:
                written += os.write(fd, view[written:aligned])
            os.ftruncate(fd, length)
            os.fsync(fd)
            return True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct = False  # accepted at open, refused at write: the usual way
            return False
        finally:
            os.close(fd)
