"""A version's reference profile: ``tensorgate profile`` writes ``<version>/profile.json``.

The command loads the version as ``serve`` would (config, sessions, warm-up, its own
tests), runs the reference data through it, summarises every input and output feature
(features.py) and writes, per feature:

- numeric kinds: ``edges`` and ``fractions`` (the reference histogram, stats.py),
  ``summary`` (count, nan, mean, std, min, p01, p50, p99, max) and ``sample`` (at most
  ``--sample`` reference values, sorted: the KS reference);
- ``category`` (BYTES): ``categories`` (the most frequent values) and ``fractions``
  (each category's share, "other" last).

Data: ``.npz`` (arrays named as the inputs, rows first), ``.npy`` (a model with one
input), or with pyarrow ``.parquet`` / ``.csv`` / ``.jsonl``: the column named as an
input (a list column: the row's values in order; a scalar column: one element; a
string column: a BYTES element), or, for a model with one input and no such column,
every numeric column side by side. Rows whose list lengths differ run in groups of one
length. For a model without batching (max_batch_size 0) every array has a leading
sample axis and each sample runs alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tensorgate.errors import ModelLoadError
from tensorgate.fileio import atomic_write_text
from tensorgate.observability.drift import stats
from tensorgate.observability.drift.features import (
    CATEGORY,
    Feature,
    extractors,
    plan,
)

PROFILE = "profile.json"
FORMAT = "tensorgate-drift-profile/1"
DEFAULT_MAX_ROWS = 100_000
TABLE_SUFFIXES = (".parquet", ".pq", ".csv", ".jsonl", ".ndjson")


class ProfileError(ValueError):
    """A profile that cannot be made or read; the message says why."""


# -- reading a profile (the server) -------------------------------------------------------


class Reference:
    """One feature's reference, as the monitor compares with it."""

    __slots__ = ("feature", "edges", "fractions", "sample", "categories", "rows")

    def __init__(self, feature: Feature, edges, fractions, sample, categories,
                 rows: int = 0) -> None:
        self.feature = feature
        self.rows = rows  # reference observations (PSI's floor for empty bins), 0 unknown
        self.edges = edges  # float64 bin edges; None for a category feature
        self.fractions = fractions  # float64, one per bin (categories + "other")
        self.sample = sample  # sorted float64 (KS); None for a category feature
        self.categories = categories  # list[str] for a category feature, else None


def parse(doc: dict, where: str = PROFILE) -> tuple[dict, list[Reference]]:
    """(header fields, references) of a profile document; ProfileError if malformed."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileError(f"{where}: not a TensorGate drift profile (format {FORMAT})")
    refs = []
    try:
        for item in doc["features"]:
            f = Feature(item["name"], item["source"], item["tensor"], item["kind"],
                        int(item.get("index", -1)))
            if f.source not in ("input", "output"):
                raise ProfileError(f"{where}: feature {f.name}: source {f.source!r}")
            fractions = np.asarray(item["fractions"], np.float64)
            rows = int((item.get("summary") or {}).get("count") or 0)
            if f.kind == CATEGORY:
                cats = [str(c) for c in item["categories"]]
                if len(fractions) != len(cats) + 1:
                    raise ProfileError(f"{where}: feature {f.name}: {len(cats)} categories "
                                       f"need {len(cats) + 1} fractions")
                refs.append(Reference(f, None, fractions, None, cats, rows))
                continue
            edges = np.asarray(item["edges"], np.float64)
            if len(fractions) != len(edges) + 1 or np.any(np.diff(edges) <= 0):
                raise ProfileError(f"{where}: feature {f.name}: edges must ascend, with one "
                                   "fraction more than edges")
            sample = np.sort(np.asarray(item.get("sample", []), np.float64))
            refs.append(Reference(f, edges, fractions, sample, None, rows))
    except ProfileError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{where}: malformed feature entry ({type(exc).__name__}: "
                           f"{exc})") from None
    header = {k: v for k, v in doc.items() if k != "features"}
    return header, refs


def read(path: Path) -> tuple[dict, list[Reference]]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    return parse(doc, str(path))


# -- making a profile ---------------------------------------------------------------------


def build(features: list[Feature], tensors: dict[tuple[str, str], list[np.ndarray]],
          bins: int = stats.DEFAULT_BINS, sample: int = stats.DEFAULT_SAMPLE,
          top: int = stats.DEFAULT_CATEGORIES, seed: int = 0) -> list[dict]:
    """Feature entries of a profile from the reference tensors: ``tensors`` maps
    (source, tensor name) to that tensor's arrays (rows first)."""
    categories = {}
    for f in features:
        if f.kind == CATEGORY:
            values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                      for a in tensors[(f.source, f.tensor)] for v in a.reshape(-1)]
            categories[f.tensor] = stats.top_categories(values, top)
    entries = {}
    for ex in extractors([f for f in features if (f.source, f.tensor) in tensors], categories):
        matrix = ex.matrix(tensors[(ex.source, ex.tensor)])
        for j, f in enumerate(ex.features):
            column = matrix[:, j]
            entry = {"name": f.name, "source": f.source, "tensor": f.tensor, "kind": f.kind}
            if f.index >= 0:
                entry["index"] = f.index
            if f.kind == CATEGORY:
                counts = stats.code_counts(column, len(ex.categories) + 1)
                entry.update(categories=ex.categories,
                             fractions=stats.fractions(counts).tolist(),
                             summary={"count": int(len(column))})
            else:
                edges = stats.quantile_edges(column, bins)
                entry.update(
                    edges=edges.tolist(),
                    fractions=stats.fractions(stats.bin_counts(edges, column)).tolist(),
                    summary=stats.summary(column),
                    sample=stats.reservoir(column, sample, seed).tolist(),
                )
            entries[f.name] = entry
    return [entries[f.name] for f in features if f.name in entries]


def read_data(path: Path, inputs: dict, max_rows: int) -> list[dict[str, np.ndarray]]:
    """The reference inputs as chunks (arrays by input name, rows first, every array of
    a chunk with the same rows), at most ``max_rows`` rows in all."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                chunks = [{k: z[k] for k in z.files if k in inputs}]
        except (OSError, ValueError) as exc:
            raise ProfileError(f"--data {path}: {exc}") from None
    elif suffix == ".npy":
        if len(inputs) != 1:
            raise ProfileError(f"--data {path}: a .npy file holds one array; the model has "
                               f"{len(inputs)} inputs ({', '.join(inputs)}): use .npz")
        try:
            chunks = [{next(iter(inputs)): np.load(path, allow_pickle=False)}]
        except (OSError, ValueError) as exc:
            raise ProfileError(f"--data {path}: {exc}") from None
    elif suffix in TABLE_SUFFIXES:
        chunks = _table_chunks(path, inputs)
    else:
        raise ProfileError(f"--data {path}: expected .npz, .npy, "
                           f"{', '.join(TABLE_SUFFIXES)}")
    out, left = [], max_rows
    for chunk in chunks:
        missing = [n for n, s in inputs.items() if n not in chunk and not s.optional]
        if missing:
            raise ProfileError(f"--data {path}: no data for input(s) {', '.join(missing)} "
                               f"(has: {', '.join(chunk) or 'nothing'})")
        rows = {len(a) for a in chunk.values()}
        if len(rows) != 1:
            raise ProfileError(f"--data {path}: the inputs' arrays have different row "
                               f"counts {sorted(rows)}")
        n = rows.pop()
        if left <= 0 or not n:
            continue
        out.append({k: a[:left] for k, a in chunk.items()})
        left -= min(n, left)
    if not out:
        raise ProfileError(f"--data {path}: no rows")
    return out


def _table_chunks(path: Path, inputs: dict) -> list[dict[str, np.ndarray]]:
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        raise ProfileError(f"--data {path}: reading {path.suffix} needs pyarrow "
                           "(pip install pyarrow), or give .npz/.npy") from None
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
        else:
            import pyarrow.json as pjson

            table = pjson.read_json(path)
    except (OSError, pa.ArrowException) as exc:
        raise ProfileError(f"--data {path}: {exc}") from None
    n = table.num_rows
    columns: dict[str, list[np.ndarray]] = {}  # input -> one array per row
    for name, spec in inputs.items():
        if name in table.column_names:
            col = table.column(name).combine_chunks()
            if _is_list(pa, col.type):
                # every level flattened; each leaf value knows its row
                parents = np.arange(n)
                values = col
                while _is_list(pa, values.type):
                    parents = parents[pc.list_parent_indices(values).to_numpy()]
                    values = pc.list_flatten(values)
                values = values.to_numpy(zero_copy_only=False)
                ends = np.cumsum(np.bincount(parents, minlength=n))
                rows = np.split(values, ends[:-1]) if n else []
            else:
                values = col.to_numpy(zero_copy_only=False)
                rows = [values[i:i + 1] for i in range(n)]
        elif len(inputs) == 1 and spec.dtype.wire != "BYTES":
            numeric = [c for c, t in zip(table.column_names, table.schema.types)
                       if pa.types.is_integer(t) or pa.types.is_floating(t)]
            if not numeric:
                raise ProfileError(f"--data {path}: no column '{name}' and no numeric "
                                   "columns")
            stacked = np.column_stack([table.column(c).to_numpy() for c in numeric])
            rows = list(stacked)
        else:
            if spec.optional:
                continue
            raise ProfileError(f"--data {path}: no column '{name}' (columns: "
                               f"{', '.join(table.column_names)})")
        columns[name] = rows
    # rows whose tensors have the same lengths batch together
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        groups.setdefault(tuple(len(rows[i]) for rows in columns.values()), []).append(i)
    chunks = []
    for key, idx in groups.items():
        chunk = {}
        for (name, rows), length in zip(columns.items(), key):
            spec = inputs[name]
            dims = tuple(d if d >= 0 else -1 for d in spec.dims)
            if -1 in dims and dims.count(-1) == 1:
                known = int(np.prod([d for d in dims if d >= 0])) or 1
                dims = tuple(length // known if d == -1 else d for d in dims)
            stacked = np.stack([np.asarray(rows[i]) for i in idx])
            try:
                chunk[name] = stacked.reshape((len(idx),) + dims)
            except ValueError:
                raise ProfileError(
                    f"--data {path}: column '{name}' has {length} values a row; input "
                    f"'{name}' has dims {list(spec.dims)}") from None
        chunks.append(chunk)
    return chunks


def _is_list(pa, t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def reference_tensors(model, chunks: list[dict[str, np.ndarray]], run
                      ) -> dict[tuple[str, str], list[np.ndarray]]:
    """Run the chunks through ``run(feed) -> outputs by name`` in batches the model
    takes; every input and output tensor by (source, name), rows first."""
    from tensorgate.runtime.version_tests import _feed, _run_rows  # the gate's own runner

    tensors: dict[tuple[str, str], list[np.ndarray]] = {}
    for chunk in chunks:
        feed = _feed(model, chunk, "profile data")
        if model.max_batch_size > 0:
            outputs = _run_rows(model, feed, run)
        else:  # a leading sample axis: one run per sample
            n = len(next(iter(feed.values())))
            parts = [run({k: v[i] for k, v in feed.items()}) for i in range(n)]
            outputs = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
        for name, array in chunk.items():
            tensors.setdefault(("input", name), []).append(array)
        for name, array in outputs.items():
            tensors.setdefault(("output", name), []).append(np.asarray(array))
    return tensors


def make_profile(model, chunks, run, data_name: str, bins: int, sample: int, top: int,
                 seed: int = 0) -> dict:
    """The profile document of ``model`` for the reference data ``chunks``."""
    tensors = reference_tensors(model, chunks, run)
    features = plan(model.inputs, model.outputs)
    rows = sum(len(next(iter(c.values()))) for c in chunks)
    return {
        "format": FORMAT,
        "model": model.name,
        "version": model.version,
        "created_unix": round(time.time(), 3),
        "data": data_name,
        "rows": rows,
        "bins": bins,
        "sample": sample,
        "categories": top,
        "features": build(features, tensors, bins, sample, top, seed),
    }


def write_atomic(path: Path, doc: dict) -> None:
    """Write temp, fsync, rename: a server never reads half a profile."""
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")), sync_dir=False)


def profile_command(root: str, name: str, version: int | None, data: str,
                    output: str | None, bins: int, sample: int, top: int, max_rows: int,
                    as_json: bool) -> int:
    """``tensorgate profile``: the exit status (0 written, 1 failed, 2 bad argument)."""
    import sys

    from tensorgate.repository.config import parse_config
    from tensorgate.repository.layout import versions_on_disk
    from tensorgate.repository.paths import RepositoryPaths
    from tensorgate.runtime.model import ModelVersion
    from tensorgate.settings import Settings

    def fail(message: str, code: int) -> int:
        print(f"tensorgate profile: {message}", file=sys.stderr)
        return code

    for flag, value, low, high in (("--bins", bins, 2, 1000), ("--sample", sample, 10, 1_000_000),
                                   ("--categories", top, 1, 10_000),
                                   ("--max-rows", max_rows, 1, 100_000_000)):
        if not low <= value <= high:
            return fail(f"{flag} must be in {low}..{high}, got {value}", 2)
    try:
        paths = RepositoryPaths(Path(root))
        files = paths.model_files(paths.model_dir(name))
        if version is None:
            on_disk = versions_on_disk(files.directory)
            if not on_disk:
                return fail(f"model '{name}' has no version directories", 2)
            version = max(on_disk)
        target = Path(output) if output else files.file(str(version), PROFILE,
                                                         what="drift profile")
        parsed = parse_config(files.config())
        model = ModelVersion.load(name, version, files, parsed,
                                  Settings().default_max_batch_size)
    except ModelLoadError as exc:
        return fail(f"{name}:{version} does not load: {exc}", 1)
    except Exception as exc:  # a bad name or path: the message says which
        return fail(str(getattr(exc, "message", exc)), 2)
    names = model.output_names
    session = model._sessions[0]  # one instance is enough offline, as `tensorgate test`

    def run(feed):
        return dict(zip(names, session.run(names, feed)))

    try:
        chunks = read_data(Path(data), model.inputs, max_rows)
        doc = make_profile(model, chunks, run, Path(data).name, bins, sample, top)
    except (ProfileError, ModelLoadError) as exc:
        return fail(str(exc), 1)
    except Exception as exc:  # onnxruntime refused the data
        return fail(f"running the data through {model.label} failed: {exc}", 1)
    try:
        write_atomic(target, doc)
    except OSError as exc:
        return fail(f"cannot write {target}: {exc}", 1)
    report = {"model": name, "version": version, "profile": str(target), "rows": doc["rows"],
              "features": [f["name"] for f in doc["features"]]}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{name}:{version}: profiled {doc['rows']} rows, {len(doc['features'])} "
              f"features -> {target}")
    return 0
