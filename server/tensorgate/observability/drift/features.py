"""Which features a version's tensors have, and their values for a batch of rows.

The same code summarises the reference data (``tensorgate profile``) and the served
requests (the monitor's background thread), so the two are compared like for like.
Per tensor, inputs and outputs alike:

- a numeric tensor of at most ``ELEMENTWISE_MAX`` elements per row (fixed dims): one
  feature per element position, ``NAME[i]`` (i: the flat position within the row);
- a larger or variable-shape numeric tensor (images, embeddings, token ids): per-row
  summaries, ``NAME:mean`` and ``NAME:norm`` (L2), plus ``NAME:length`` (elements in
  the row) when a dimension is variable;
- a BYTES tensor: every element counts once (pooled over a row's elements),
  ``NAME:length`` (its UTF-8 byte length) and ``NAME:category`` (which of the
  reference's most frequent values it is, or "other").

A row is one row of the batch dimension; for a model without batching
(max_batch_size 0) the whole tensor is one row. An extractor turns a list of a
tensor's arrays (rows first) into one float64 matrix, a column per feature (category
codes as numbers): small rows in one numpy pass per list where the arrays' shapes
agree; large rows read once each where they lie, sum and sum of squares together, with
the GIL released (ext/rowstats.pyx).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from tensorgate._ext.rowstats import row_moments, row_summaries

ELEMENTWISE_MAX = 32
SCRATCH_BYTES = 1 << 20  # rows copied together per pass: fits a core's L2 cache

ELEMENT, MEAN, NORM, LENGTH, BYTES_LENGTH, CATEGORY = (
    "element", "mean", "norm", "length", "bytes_length", "category",
)
KINDS = (ELEMENT, MEAN, NORM, LENGTH, BYTES_LENGTH, CATEGORY)


@dataclass(frozen=True)
class Feature:
    name: str  # e.g. "INPUT0[3]", "IMAGE:mean", "TEXT:category"
    source: str  # "input" or "output"
    tensor: str
    kind: str  # one of KINDS
    index: int = -1  # ELEMENT: the flat position within a row


def plan(inputs: dict, outputs: dict) -> list[Feature]:
    """The features of a version from its tensor specs (tensors.TensorSpec by name)."""
    features = []
    for source, specs in (("input", inputs), ("output", outputs)):
        for name, spec in specs.items():
            if spec.dtype.wire == "BYTES":
                features += [Feature(f"{name}:length", source, name, BYTES_LENGTH),
                             Feature(f"{name}:category", source, name, CATEGORY)]
                continue
            count = math.prod(spec.dims) if spec.fixed else -1
            if 0 < count <= ELEMENTWISE_MAX:
                features += [Feature(f"{name}[{i}]", source, name, ELEMENT, i)
                             for i in range(count)]
                continue
            features += [Feature(f"{name}:mean", source, name, MEAN),
                         Feature(f"{name}:norm", source, name, NORM)]
            if not spec.fixed:
                features.append(Feature(f"{name}:length", source, name, LENGTH))
    return features


class Extractor:
    """The features of one tensor, computed together; ``columns`` in matrix order."""

    def __init__(self, source: str, tensor: str, features: list[Feature],
                 categories: list[str] | None = None) -> None:
        self.source = source
        self.tensor = tensor
        self.features = list(features)
        self.bytes = any(f.kind in (BYTES_LENGTH, CATEGORY) for f in features)
        self._elements = np.array([f.index for f in features if f.kind == ELEMENT], np.intp)
        self.categories = list(categories or [])
        self._codes = {c: i for i, c in enumerate(self.categories)}
        self._kinds = [f.kind for f in features]
        self._moments = MEAN in self._kinds or NORM in self._kinds
        # Where row_summaries writes each summary in a matrix row (-1: not a feature).
        self._columns = tuple(self._kinds.index(k) if k in self._kinds else -1
                              for k in (MEAN, NORM, LENGTH))
        self._every_element = (len(self._elements) == len(self._kinds) and bool(
            (self._elements == np.arange(len(self._elements))).all()))
        # matrix() runs on the drift thread and on worker threads (Batcher.observer): each
        # thread reuses its own scratch buffer.
        self._local = threading.local()

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def matrix(self, arrays: list[np.ndarray]) -> np.ndarray:
        """(observations, features) float64 for arrays of this tensor, rows first."""
        if not arrays:
            return np.empty((0, len(self.features)))
        if len(arrays) == 1 and not self.bytes and not self._moments:
            return self._numeric(arrays[0])  # a batch: one array
        if self.bytes:
            return self._bytes_matrix(arrays)
        if self._moments:  # large rows: each read once, where it lies (no copy)
            return self._summaries(arrays)
        if len({a.shape[1:] for a in arrays}) > 1:
            return np.concatenate([self._numeric(a) for a in arrays])
        # Rows are copied together a chunk at a time into one reused buffer that stays
        # in a core's cache, so the reductions read them from there (a fresh array of
        # every row would be one more pass through memory, and page faults).
        total = sum([a.nbytes for a in arrays])
        if total <= SCRATCH_BYTES:
            return self._chunk(arrays, total)
        parts, chunk, size = [], [], 0
        for a in arrays:
            if chunk and size + a.nbytes > SCRATCH_BYTES:
                parts.append(self._chunk(chunk, size))
                chunk, size = [], 0
            chunk.append(a)
            size += a.nbytes
        parts.append(self._chunk(chunk, size))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _chunk(self, arrays: list[np.ndarray], nbytes: int) -> np.ndarray:
        if len(arrays) == 1:
            return self._numeric(arrays[0])
        scratch = getattr(self._local, "scratch", None)
        if scratch is None or len(scratch) < nbytes:
            scratch = self._local.scratch = np.empty(max(nbytes, SCRATCH_BYTES), np.uint8)
        first = arrays[0]
        rows = scratch[:nbytes].view(first.dtype).reshape(
            (sum(map(len, arrays)),) + first.shape[1:])
        np.concatenate(arrays, out=rows)
        return self._numeric(rows)

    def _summaries(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Per-row summaries (mean, norm, length) of arrays whose shapes may differ.
        (A batch is one array: this runs once per batch on a worker thread, so it keeps
        to a few numpy calls.)"""
        if len(self._elements):  # a plan never mixes them; a hand-made profile could
            return np.concatenate([self._numeric(a) for a in arrays])
        flats = []
        for a in arrays:
            f = a.reshape(len(a), -1)
            flats.append(f if f.dtype.kind == "f" and f.dtype.itemsize >= 4
                         else f.astype(np.float64))  # ints, bool, FP16
        out = np.empty((sum([len(f) for f in flats]), len(self._kinds)))
        try:
            row_summaries(flats, out, *self._columns)
            return out
        except ValueError:  # a byte-swapped or strided view: numpy's way
            sums, sumsq = _numpy_moments(flats)
        if len(flats) == 1:
            widths = flats[0].shape[1]
        else:
            widths = np.repeat(np.array([f.shape[1] for f in flats], np.float64),
                               [len(f) for f in flats])
        for j, kind in enumerate(self._kinds):
            if kind == MEAN:
                if np.all(widths):
                    np.divide(sums, widths, out=out[:, j])
                else:  # empty rows have no mean
                    out[:, j] = np.nan
                    np.divide(sums, widths, out=out[:, j], where=np.asarray(widths) > 0)
            elif kind == NORM:
                np.sqrt(sumsq, out=out[:, j])
            elif kind == LENGTH:
                out[:, j] = widths
        return out

    def _numeric(self, array: np.ndarray) -> np.ndarray:
        n = array.shape[0]
        flat = array.reshape(n, -1)
        if flat.dtype.kind != "f" or flat.dtype.itemsize < 4:  # ints, bool, FP16
            flat = flat.astype(np.float64)
        if self._every_element and flat.shape[1] == len(self._elements):
            return flat.astype(np.float64)  # every element a feature, in order: one copy
        out = np.empty((n, len(self._kinds)))
        if len(self._elements):
            if flat.shape[1] <= self._elements.max():  # fewer elements than profiled
                out[:, : len(self._elements)] = np.nan
            else:
                out[:, : len(self._elements)] = flat[:, self._elements]
        width = flat.shape[1]
        if self._moments:
            sums, sumsq = _moments([flat])
        for j, kind in enumerate(self._kinds):
            if kind == MEAN:
                out[:, j] = sums / width if width else np.nan
            elif kind == NORM:
                out[:, j] = np.sqrt(sumsq)
            elif kind == LENGTH:
                out[:, j] = width
        return out

    def _bytes_matrix(self, arrays: list[np.ndarray]) -> np.ndarray:
        values = [v for a in arrays for v in a.reshape(-1)]
        out = np.empty((len(values), len(self._kinds)))
        other = len(self.categories)
        codes = self._codes
        texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                 for v in values]
        for j, kind in enumerate(self._kinds):
            if kind == BYTES_LENGTH:
                out[:, j] = [len(v) if isinstance(v, bytes) else len(t.encode())
                             for v, t in zip(values, texts)]
            else:
                out[:, j] = [codes.get(t, other) for t in texts]
        return out


def _moments(flats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(sum, sum of squares) of each row of the 2-D float arrays ``flats``, rows in
    order: one pass per row with the GIL released (ext/rowstats.pyx) where rows are
    contiguous, else numpy's (einsum: its own SIMD loops, one pass each)."""
    n = sum([len(f) for f in flats])
    sums, sumsq = np.empty(n), np.empty(n)
    try:
        row_moments(flats, sums, sumsq)
    except ValueError:  # a byte-swapped or strided view: numpy's way
        return _numpy_moments(flats)
    return sums, sumsq


def _numpy_moments(flats: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``_moments`` by numpy, for rows the native pass does not read."""
    return (np.concatenate([np.einsum("ij->i", f) for f in flats]),
            np.concatenate([np.einsum("ij,ij->i", f, f) for f in flats]))


def extractors(features: list[Feature], categories: dict[str, list[str]] | None = None
               ) -> list[Extractor]:
    """One extractor per (source, tensor), in the order features name them;
    ``categories``: the reference categories of BYTES tensors by tensor name."""
    grouped: dict[tuple[str, str], list[Feature]] = {}
    for f in features:
        grouped.setdefault((f.source, f.tensor), []).append(f)
    out = []
    for (source, tensor), group in grouped.items():
        # elementwise features first: _numeric fills them as one block
        group.sort(key=lambda f: f.kind != ELEMENT)
        out.append(Extractor(source, tensor, group, (categories or {}).get(tensor)))
    return out


def rows_first(array: np.ndarray, batched: bool) -> np.ndarray:
    """A tensor as rows: itself when the model batches, one row when it does not."""
    return array if batched else array.reshape((1,) + array.shape)
