"""Input files: which ones, in which format, with which columns, read in row chunks.

``--input`` is one file, a directory (its files of known formats, sorted by name) or a
glob. Formats by extension: ``.parquet``/``.pq``, ``.csv`` (also ``.tsv``, tab
separated), ``.jsonl``/``.ndjson``/``.json`` (JSON Lines), ``.npy``, ``.npz``.

Every file is read as a sequence of Arrow tables of exactly ``chunk_rows`` rows (the
last one shorter): chunk ``c`` of file ``f`` holds its rows ``[c * chunk_rows, ...)``,
the unit the manifest records. Memory is bounded by the chunk size, never by a file's
size: Parquet, CSV and JSON Lines are streamed by pyarrow, NPY is memory-mapped, and
NPZ members are read sequentially from the archive.

NumPy files become columns: an NPZ archive's arrays by their names; a structured NPY
array's fields by theirs; a plain NPY array is one column named ``data``. Axis 0 is the
row; a row's remaining axes become nested fixed-size lists (a tensor row).
"""

from __future__ import annotations

import glob as _glob
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from tensorgate.batch.common import BatchError

FORMATS = {
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv", ".tsv": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".npy": "npy", ".npz": "npz",
}
NPY_COLUMN = "data"  # the column of a plain (not structured) .npy array
CSV_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True)
class InputFile:
    path: Path
    format: str
    size: int
    mtime_ns: int

    def identity(self) -> list:
        """What the run's fingerprint records of this file."""
        return [str(self.path), self.size, self.mtime_ns]


def list_inputs(spec: str, fmt: str = "auto") -> list[InputFile]:
    """The files ``--input`` names, in a stable order; BatchError when none."""
    path = Path(spec)
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir()
                            if p.is_file() and not p.name.startswith((".", "_")))
        if fmt == "auto":
            candidates = [p for p in candidates if p.suffix.lower() in FORMATS]
    elif path.is_file():
        candidates = [path]
    elif any(ch in spec for ch in "*?["):
        candidates = sorted(Path(p) for p in _glob.glob(spec, recursive=True)
                            if Path(p).is_file())
    else:
        raise BatchError(f"--input {spec}: no such file or directory")
    if not candidates:
        raise BatchError(f"--input {spec}: no input files"
                         + (f" of a known format ({', '.join(sorted(FORMATS))})"
                            if fmt == "auto" else ""))
    files = []
    for p in candidates:
        kind = fmt if fmt != "auto" else FORMATS.get(p.suffix.lower())
        if kind is None:
            raise BatchError(f"--input {p}: unknown format (extensions: "
                             f"{', '.join(sorted(FORMATS))}; or give --format)")
        st = p.stat()
        files.append(InputFile(p.resolve(), kind, st.st_size, st.st_mtime_ns))
    kinds = {f.format for f in files}
    if len(kinds) > 1:
        raise BatchError(f"--input {spec}: files of several formats ({', '.join(sorted(kinds))});"
                         " give one format at a time")
    return files


# -- NumPy -------------------------------------------------------------------------------


def numpy_column(values: np.ndarray) -> pa.Array:
    """Rows of an array (axis 0) as an Arrow column: scalars, or nested fixed-size lists
    for the remaining axes; strings as strings, bytes as binary."""
    if values.dtype.kind in "US":
        flat = pa.array(values.reshape(-1).tolist(),
                        type=pa.string() if values.dtype.kind == "U" else pa.binary())
    elif values.dtype.kind == "O":
        flat = pa.array(values.reshape(-1).tolist())
    else:
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    for size in reversed(values.shape[1:]):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def _numpy_table(arrays: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({name: numpy_column(a) for name, a in arrays.items()})


def _npy_columns(array: np.ndarray) -> dict[str, np.ndarray]:
    if array.dtype.names:
        return {name: array[name] for name in array.dtype.names}
    return {NPY_COLUMN: array}


class _NpzMember:
    """One array of an NPZ archive, read sequentially in row ranges."""

    def __init__(self, archive: zipfile.ZipFile, member: str) -> None:
        self._archive, self._member = archive, member
        self._file = archive.open(member)
        version = np.lib.format.read_magic(self._file)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self._file)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self._file)
        else:
            shape, fortran, dtype = (), True, np.dtype(object)
        self.streamable = not fortran and not dtype.hasobject and len(shape) >= 1
        if not self.streamable:  # loaded whole: Fortran order, pickled objects, scalars
            self._file.close()
            with archive.open(member) as f:
                self._whole = np.load(f, allow_pickle=False)
            shape, dtype = self._whole.shape, self._whole.dtype
        self.shape, self.dtype = shape, dtype
        self.rows = shape[0] if shape else 1
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        self._at = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if not self.streamable:
            return self._whole[start:stop]
        if start < self._at:
            raise BatchError(f"npz member {self._member}: rows read out of order")
        skip = (start - self._at) * self._row_bytes
        while skip:
            skip -= len(self._file.read(min(skip, 1 << 24)))
        want = (stop - start) * self._row_bytes
        data = self._file.read(want)
        if len(data) != want:
            raise BatchError(f"npz member {self._member}: truncated array data")
        self._at = stop
        return np.frombuffer(data, self.dtype).reshape((stop - start,) + tuple(self.shape[1:]))

    def close(self) -> None:
        if self.streamable:
            self._file.close()


def _npz_members(path: Path) -> tuple[zipfile.ZipFile, dict[str, _NpzMember]]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BatchError(f"{path}: not an NPZ archive: {exc}") from None
    members = {}
    for member in archive.namelist():
        if member.endswith(".npy"):
            members[member[:-4]] = _NpzMember(archive, member)
    rows = {m.rows for m in members.values()}
    if len(rows) > 1:
        raise BatchError(f"{path}: its arrays have different lengths along axis 0 "
                         + ", ".join(f"{k}={m.rows}" for k, m in members.items()))
    return archive, members


# -- schema and row counts ----------------------------------------------------------------


def read_schema(file: InputFile) -> pa.Schema:
    """The columns of a file, read without reading its rows (CSV and JSON Lines: from
    their first block)."""
    try:
        if file.format == "parquet":
            import pyarrow.parquet as pq

            return pq.read_schema(file.path)
        if file.format == "csv":
            reader = _open_csv(file, None)
            schema = reader.schema
            reader.close()
            return schema
        if file.format == "jsonl":
            import pyarrow.json as pj

            reader = pj.open_json(file.path, read_options=pj.ReadOptions(block_size=1 << 20))
            return reader.schema
        if file.format == "npy":
            array = np.load(file.path, mmap_mode="r", allow_pickle=False)
            return _numpy_table({k: v[:1] for k, v in _npy_columns(array).items()}).schema
        archive, members = _npz_members(file.path)
        try:
            return _numpy_table({k: m.read(0, min(1, m.rows)) for k, m in members.items()}).schema
        finally:
            archive.close()
    except BatchError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BatchError(f"{file.path}: cannot read it as {file.format}: {exc}") from None


def row_count(file: InputFile) -> int | None:
    """Rows in a file where its metadata says (Parquet, NPY, NPZ); None otherwise."""
    try:
        if file.format == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(file.path).metadata.num_rows
        if file.format == "npy":
            return len(np.load(file.path, mmap_mode="r", allow_pickle=False))
        if file.format == "npz":
            archive, members = _npz_members(file.path)
            archive.close()
            return next(iter(members.values())).rows if members else 0
    except (OSError, ValueError, pa.ArrowException):
        return None
    return None


def count_lines(file: InputFile) -> int:
    """Rows of a CSV or JSON Lines file by its line breaks (for the progress bar's total:
    a quoted line break in a CSV cell makes it an estimate)."""
    lines = 0
    last = b"\n"
    with open(file.path, "rb") as f:
        while block := f.read(1 << 24):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(0, lines - (1 if file.format == "csv" else 0))


def _open_csv(file: InputFile, schema: pa.Schema | None):
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t" if file.path.suffix.lower() == ".tsv" else ",")
    convert = pcsv.ConvertOptions(
        column_types=dict(zip(schema.names, schema.types)) if schema is not None else None,
        strings_can_be_null=True,
    )
    return pcsv.open_csv(file.path, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                         parse_options=parse, convert_options=convert)


# -- chunks ---------------------------------------------------------------------------------


def _batches(file: InputFile, schema: pa.Schema | None, chunk_rows: int,
             columns: list[str] | None) -> Iterator[pa.Table]:
    """Tables of any size, in order, covering the whole file."""
    if file.format == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(file.path)
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=columns):
            yield pa.Table.from_batches([batch])
    elif file.format == "csv":
        reader = _open_csv(file, schema)
        for batch in reader:
            yield pa.Table.from_batches([batch])
    elif file.format == "jsonl":
        import pyarrow.json as pj

        parse = pj.ParseOptions(explicit_schema=schema) if schema is not None else None
        reader = pj.open_json(file.path, read_options=pj.ReadOptions(block_size=CSV_BLOCK_BYTES),
                              parse_options=parse)
        for batch in reader:
            yield pa.Table.from_batches([batch])
    elif file.format == "npy":
        arrays = _npy_columns(np.load(file.path, mmap_mode="r", allow_pickle=False))
        if columns is not None:
            arrays = {k: v for k, v in arrays.items() if k in columns}
        rows = len(next(iter(arrays.values())))
        for start in range(0, rows, chunk_rows):
            yield _numpy_table({k: v[start:start + chunk_rows] for k, v in arrays.items()})
    else:
        archive, members = _npz_members(file.path)
        if columns is not None:
            members = {k: m for k, m in members.items() if k in columns}
        try:
            rows = next(iter(members.values())).rows if members else 0
            for start in range(0, rows, chunk_rows):
                stop = min(start + chunk_rows, rows)
                yield _numpy_table({k: m.read(start, stop) for k, m in members.items()})
        finally:
            for m in members.values():
                m.close()
            archive.close()


def chunks(file: InputFile, chunk_rows: int, schema: pa.Schema | None = None,
           columns: list[str] | None = None, skip=frozenset()) -> Iterator[tuple[int, pa.Table | None]]:
    """(chunk index, table of exactly ``chunk_rows`` rows, the last shorter) for every
    chunk of a file. Chunks in ``skip`` are read past and yielded as None (not built).
    ``schema``: the column types every file is read with (CSV and JSON Lines infer
    them per file otherwise)."""
    pending: list[pa.Table] = []
    have = 0
    index = 0
    try:
        for table in _batches(file, schema if file.format in ("csv", "jsonl") else None,
                              chunk_rows, columns):
            if columns is not None and file.format in ("csv", "jsonl"):
                table = table.select([c for c in columns if c in table.column_names])
            while table.num_rows:
                take = min(chunk_rows - have, table.num_rows)
                if index not in skip:
                    pending.append(table.slice(0, take))
                table = table.slice(take)
                have += take
                if have == chunk_rows:
                    yield index, (pa.concat_tables(pending) if index not in skip else None)
                    pending, have, index = [], 0, index + 1
        if have:
            yield index, (pa.concat_tables(pending) if index not in skip else None)
    except BatchError:
        raise
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise BatchError(f"{file.path}: reading chunk {index}: {exc}") from None
