"""A chunk's converted rows -> the model's requests, and their answers -> rows again.

A batching model gets requests of ``batch_size`` rows, each one batch in the batcher.
Rows of variable-length inputs are sorted by length and cut into runs, so a request
holds rows of similar length: padded to its longest row with the pad value of the
model's ``variable_length_batching`` parameter (the same padding the batcher does, so
the model's own padding-invariance check covers it), or, without that parameter,
runs of exactly equal lengths. A model that does not batch (max_batch_size 0) gets one
request per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tensorgate.batch.mapping import Converted, Dense, Ragged


@dataclass
class Call:
    """One request to the model version."""

    index: np.ndarray  # which converted rows (positions among the chunk's ok rows)
    arrays: dict[str, np.ndarray]
    rows: int
    lengths: np.ndarray | None = None  # each row's own length (padded requests)
    shape_key: object = None


def plan_calls(conv: Converted, model, batch_size: int) -> tuple[list[Call], list[tuple[int, str]]]:
    """The requests for a chunk's converted rows, and the rows refused here (position
    among the ok rows, reason): padded inputs whose lengths disagree."""
    n = conv.ok_rows
    if n == 0:
        return [], []
    tensors = conv.tensors
    if model.max_batch_size <= 0:
        calls = []
        for i in range(n):
            arrays = {name: (t.array[i] if isinstance(t, Dense) else t.row(i))
                      for name, t in tensors.items()}
            key = tuple(a.shape for a in arrays.values())
            calls.append(Call(np.array([i]), arrays, 1, None, key))
        return calls, []
    ragged = {name: t for name, t in tensors.items() if isinstance(t, Ragged)}
    if not ragged:
        return [
            Call(np.arange(s, min(s + batch_size, n)),
                 {name: t.array[s:s + batch_size] for name, t in tensors.items()},
                 min(batch_size, n - s))
            for s in range(0, n, batch_size)
        ], []
    return _length_runs(tensors, ragged, model, batch_size, n)


def _length_runs(tensors, ragged, model, batch_size: int, n: int):
    plan = model.varlen
    padded = {p.name: p for p in plan.inputs} if plan is not None else {}
    lengths = {name: t.lengths() for name, t in ragged.items()}
    rejects: list[tuple[int, str]] = []
    keep = np.ones(n, bool)
    pad_names = [name for name in ragged if name in padded]
    exact_names = [name for name in ragged if name not in padded]
    length = lengths[pad_names[0]] if pad_names else np.zeros(n, np.int64)
    for name in pad_names[1:]:
        for i in np.flatnonzero(lengths[name] != length):
            keep[i] = False
            rejects.append((int(i), f"variable-length inputs must have one length: "
                                    f"'{pad_names[0]}' has {int(length[i])}, '{name}' has "
                                    f"{int(lengths[name][i])}"))
    rows = np.flatnonzero(keep)
    # Sort by the exact-length key first (only equal ones share a request), then by the
    # padded length; a stable sort keeps the input order among equals.
    keys = [lengths[name][rows] for name in reversed(exact_names)]
    order = rows[np.lexsort([length[rows]] + keys)] if len(rows) else rows
    calls = []
    start = 0
    while start < len(order):
        stop = start + 1
        first = order[start]
        while (stop < len(order) and stop - start < batch_size
               and all(lengths[name][order[stop]] == lengths[name][first] for name in exact_names)):
            stop += 1
        index = order[start:stop]
        longest = int(length[index].max()) if pad_names else None
        arrays = {}
        for name, t in tensors.items():
            if isinstance(t, Dense):
                arrays[name] = t.array[index]
            elif name in padded:
                arrays[name] = np.stack([t.row(int(i), longest, padded[name].pad) for i in index])
            else:
                arrays[name] = np.stack([t.row(int(i)) for i in index])
        own = length[index] if pad_names else None
        key = None if plan is not None else tuple(a.shape[1:] for a in arrays.values())
        calls.append(Call(index, arrays, len(index), own, key))
        start = stop
    return calls, rejects


def assemble(calls: list[Call], results: list[dict], names: list[str], model,
             rows: int) -> dict[str, np.ndarray | list]:
    """Each output's rows in converted-row order: one array (rows, ...) where every row
    has one shape, else a list of per-row arrays. ``results[i]`` is None for a call
    whose rows failed (they are left out: ``rows`` counts the others)."""
    done = [(c, r) for c, r in zip(calls, results) if r is not None]
    index = np.concatenate([c.index for c, _ in done]) if done else np.zeros(0, np.int64)
    # Positions among the surviving rows, in converted-row order.
    rank = np.empty(int(index.max()) + 1 if len(index) else 0, np.int64)
    rank[np.sort(index)] = np.arange(len(index))
    axes = model.varlen.outputs if model.varlen is not None else {}
    out: dict[str, np.ndarray | list] = {}
    for name in names:
        axis = axes.get(name)
        per_row = model.max_batch_size <= 0 or axis is not None
        blocks = []
        if not per_row:
            blocks = [r[name] for _, r in done]
            if len({b.shape[1:] for b in blocks}) > 1:
                per_row = True
        if not per_row:
            merged = np.concatenate(blocks) if blocks else np.zeros((0,), np.float32)
            if len(index) and not np.array_equal(index, np.arange(len(index))):
                ordered = np.empty_like(merged)
                ordered[rank[index]] = merged
                merged = ordered
            out[name] = merged
            continue
        items: list = [None] * len(index)
        for c, r in done:
            value = r[name]
            if model.max_batch_size <= 0:
                items[rank[c.index[0]]] = value
                continue
            for j, i in enumerate(c.index):
                part = value[j]
                if axis is not None and c.lengths is not None:
                    cut = [slice(None)] * part.ndim
                    cut[axis - 1] = slice(0, int(c.lengths[j]))
                    part = part[tuple(cut)]
                items[rank[i]] = part
        out[name] = items
    return out
