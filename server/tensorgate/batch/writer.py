"""Where a run's files go, and how each is committed.

``--output DIR`` (no .parquet suffix): part files ``DIR/part-FFFFF-CCCCCCCC.parquet`` (input
file F, chunk C; name order is input order), ``DIR/_manifest.json``, and at the end
``DIR/_errors.jsonl`` (when rows failed) and ``DIR/_summary.json``. Names beginning
with ``_`` are skipped by Parquet dataset readers (pyarrow, Spark, DuckDB), so the
directory reads as one table.

``--output FILE.parquet``: the parts and manifest go to ``FILE.parquet.parts/``; when
every chunk is done they are merged into FILE.parquet (streamed part by part, written
atomically) and removed; errors and summary go to ``FILE.errors.jsonl`` and
``FILE.summary.json``.

Every part and error file is written to a temp name, fsynced and renamed, and its
directory fsynced, before the manifest names its chunk as done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tensorgate.batch.common import BatchError, atomic_write, atomic_write_bytes, fsync_dir

PARQUET_SUFFIXES = (".parquet", ".pq")
MANIFEST = "_manifest.json"
ERROR_PARTS = "_errors"


class Layout:
    def __init__(self, output: Path, errors: Path | None = None,
                 summary: Path | None = None) -> None:
        self.output = Path(output)
        self.single = self.output.suffix.lower() in PARQUET_SUFFIXES
        if self.single:
            self.work = self.output.with_name(self.output.name + ".parts")
            base = self.output.with_suffix("")
            self.errors = Path(errors) if errors else base.with_name(base.name + ".errors.jsonl")
            self.summary = Path(summary) if summary else base.with_name(base.name + ".summary.json")
        else:
            self.work = self.output
            self.errors = Path(errors) if errors else self.output / "_errors.jsonl"
            self.summary = Path(summary) if summary else self.output / "_summary.json"
        self.manifest = self.work / MANIFEST
        self.error_parts = self.work / ERROR_PARTS

    def part(self, file_index: int, chunk: int) -> Path:
        return self.work / f"part-{file_index:05d}-{chunk:08d}.parquet"

    def error_part(self, file_index: int, chunk: int) -> Path:
        return self.error_parts / f"errors-{file_index:05d}-{chunk:08d}.jsonl"

    # -- before the run ------------------------------------------------------------------

    def prepare(self, overwrite: bool) -> None:
        """Create the work directory. An output that is not this tool's (no manifest)
        is refused unless empty; --overwrite removes this tool's previous output."""
        if overwrite:
            self.remove()
        if not self.single and self.output.exists():
            if not self.output.is_dir():
                raise BatchError(f"--output {self.output}: exists and is not a directory "
                                 "(name a .parquet file or a directory)")
            if not self._ours():
                raise BatchError(f"--output {self.output}: a directory that holds other files "
                                 "(no batch manifest in it); give an empty or new directory")
        self.work.mkdir(parents=True, exist_ok=True)
        self.error_parts.mkdir(exist_ok=True)
        for stale in (*self.work.glob(".*.tmp"), *self.error_parts.glob(".*.tmp")):
            stale.unlink()  # a write a crash interrupted; its chunk is not in the manifest

    def remove(self) -> None:
        if self.single:
            for p in (self.output, self.errors, self.summary):
                if p.exists():
                    p.unlink()
            if self.work.exists():
                shutil.rmtree(self.work)
            return
        if not self.output.exists():
            return
        if not self._ours():
            raise BatchError(f"--overwrite: {self.output} is not a batch output (no "
                             f"{MANIFEST}); not removing it")
        shutil.rmtree(self.output)
        for p in (self.errors, self.summary):
            if p.exists():
                p.unlink()

    def _ours(self) -> bool:
        """The output directory is this tool's: it has a manifest, or holds nothing but
        what a run killed before its first manifest leaves (parts, temp files)."""
        if self.manifest.exists():
            return True
        return all(p.name.startswith(("part-", ".", "_errors", "_summary"))
                   for p in self.output.iterdir())

    def finished_summary(self) -> dict | None:
        """The summary of a finished single-file run (its parts already merged and
        removed), or None."""
        if not self.single or self.manifest.exists() or not self.output.exists():
            return None
        try:
            return json.loads(self.summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    # -- per chunk -------------------------------------------------------------------------

    def commit(self, file_index: int, chunk: int, table: pa.Table | None,
               errors: list[dict]) -> None:
        """Write a chunk's part (when it has rows) and its error part (when it has
        failures), each atomically; ``sync`` before the manifest names the chunk."""
        if table is not None and table.num_rows:
            atomic_write(self.part(file_index, chunk), lambda f: pq.write_table(table, f),
                         sync_dir=False)
        if errors:
            text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
            atomic_write_bytes(self.error_part(file_index, chunk), text.encode(), sync_dir=False)

    def sync(self) -> None:
        """Make the renames of committed parts durable (before a manifest names them)."""
        fsync_dir(self.error_parts)
        fsync_dir(self.work)

    # -- at the end ------------------------------------------------------------------------

    def parts(self) -> list[Path]:
        return sorted(self.work.glob("part-*.parquet"))

    def merge_errors(self) -> int:
        """Concatenate the error parts into the errors file; returns how many lines."""
        parts = sorted(self.error_parts.glob("errors-*.jsonl")) if self.error_parts.exists() else []
        if not parts:
            if self.errors.exists():
                self.errors.unlink()
            return 0
        lines = 0

        def write(f):
            nonlocal lines
            for p in parts:
                data = p.read_bytes()
                lines += data.count(b"\n")
                f.write(data)
        self.errors.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.errors, write)
        return lines

    def merge_parts(self, schema: pa.Schema) -> None:
        """Single-file output: the parts, in order, into one Parquet file (streamed)."""
        def write(f):
            with pq.ParquetWriter(f, schema) as out:
                for p in self.parts():
                    out.write_table(pq.read_table(p).cast(schema))
        atomic_write(self.output, write)

    def cleanup(self) -> None:
        """After a single-file merge: remove the parts, error parts and manifest (the
        manifest last, so a crash in between leaves a run that resumes to here)."""
        for p in self.parts():
            p.unlink()
        if self.error_parts.exists():
            shutil.rmtree(self.error_parts)
        for p in self.work.glob(".*.tmp"):
            p.unlink()
        if self.manifest.exists():
            self.manifest.unlink()
        try:
            os.rmdir(self.work)
        except OSError:
            pass

    def drop_error_parts(self) -> None:
        if self.error_parts.exists():
            shutil.rmtree(self.error_parts)
