"""How far an optimised model's answers are from the original's, and how fast each runs.

Accuracy: both models run the same rows; per output the largest and the mean absolute
difference, and for classifier-like outputs (floats, rank >= 2, last dimension > 1:
the rule the shadow comparison uses) the share of rows whose top-1 class agrees.
Speed: in-process ONNX Runtime with the version's own session options, at batch 1 and
batch 32 (or the model's max_batch_size when smaller), the two models interleaved in
rounds so that a busy machine slows both alike; rows per second from the median run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPEED_BATCHES = (1, 32)


class DataError(Exception):
    """The evaluation data does not fit the model (the message says how)."""


@dataclass
class OutputDiff:
    name: str
    elements: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    mismatched: int = 0  # non-float outputs: elements not equal
    top1_rows: int = 0
    top1_agree: int = 0

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.elements if self.elements else 0.0

    @property
    def top1_agreement(self) -> float | None:
        return self.top1_agree / self.top1_rows if self.top1_rows else None

    def add(self, ref: np.ndarray, new: np.ndarray) -> None:
        if ref.shape != new.shape:
            raise DataError(f"output {self.name}: shape {list(new.shape)} from the optimised "
                            f"model, {list(ref.shape)} from the original")
        self.elements += ref.size
        if ref.dtype.kind in "fc" and new.dtype.kind in "fc":
            diff = np.abs(ref.astype(np.float64) - new.astype(np.float64))
            if diff.size:
                worst = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("inf")
                if np.isnan(diff).any():  # NaN where the other has a number is an error
                    worst = float("inf")
                self.max_abs = max(self.max_abs, worst)
                self.sum_abs += float(np.nansum(diff))
            if ref.ndim >= 2 and ref.shape[-1] > 1:
                a = ref.reshape(-1, ref.shape[-1]).argmax(axis=-1)
                b = new.reshape(-1, new.shape[-1]).argmax(axis=-1)
                self.top1_rows += len(a)
                self.top1_agree += int((a == b).sum())
        else:
            unequal = int((ref != new).sum()) if ref.size else 0
            self.mismatched += unequal
            if ref.dtype.kind in "iub" and new.dtype.kind in "iub" and ref.size:
                diff = np.abs(ref.astype(np.int64) - new.astype(np.int64))
                self.max_abs = max(self.max_abs, float(diff.max()))
                self.sum_abs += float(diff.sum())
            elif unequal:
                self.max_abs = float("inf")

    def report(self) -> dict:
        out = {"max_abs": self.max_abs, "mean_abs": self.mean_abs, "elements": self.elements}
        if self.top1_rows:
            out["top1_agreement"] = self.top1_agreement
            out["top1_rows"] = self.top1_rows
        if self.mismatched:
            out["mismatched_elements"] = self.mismatched
        return out


@dataclass
class Accuracy:
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    rows: int = 0

    @property
    def max_abs(self) -> float:
        return max((d.max_abs for d in self.outputs.values()), default=0.0)

    @property
    def mean_abs(self) -> float:
        total = sum(d.elements for d in self.outputs.values())
        return sum(d.sum_abs for d in self.outputs.values()) / total if total else 0.0

    @property
    def top1_agreement(self) -> float | None:
        rows = sum(d.top1_rows for d in self.outputs.values())
        return sum(d.top1_agree for d in self.outputs.values()) / rows if rows else None

    def report(self) -> dict:
        return {"rows": self.rows, "max_abs": self.max_abs, "mean_abs": self.mean_abs,
                "top1_agreement": self.top1_agreement,
                "outputs": {n: d.report() for n, d in self.outputs.items()}}


@dataclass
class Speed:
    batch: int
    original_rows_per_s: float
    optimized_rows_per_s: float
    original_p50_ms: float
    optimized_p50_ms: float

    @property
    def ratio(self) -> float:
        return self.optimized_rows_per_s / self.original_rows_per_s

    def report(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


# -- data ---------------------------------------------------------------------------


def _cast(spec, value: np.ndarray, what: str) -> np.ndarray:
    if spec.dtype.wire == "BYTES":  # ONNX Runtime takes string elements as text
        flat = [x.decode() if isinstance(x, bytes) else str(x) for x in value.reshape(-1)]
        return np.array(flat, dtype=object).reshape(value.shape)
    if value.dtype.kind not in "biufc":
        raise DataError(f"{what}: array of {value.dtype} for a {spec.dtype.wire} input")
    return value.astype(spec.dtype.numpy, copy=False)


def feed_from_arrays(inputs: dict, arrays: dict[str, np.ndarray], what: str) -> dict:
    """The model's inputs out of named arrays (extra arrays are ignored)."""
    feed = {}
    for name, spec in inputs.items():
        if name not in arrays:
            if spec.optional:
                continue
            have = ", ".join(sorted(arrays)) or "none"
            raise DataError(f"{what}: no array for input '{name}' (arrays: {have})")
        feed[name] = _cast(spec, arrays[name], what)
    return feed


def _npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def load_feeds(path: Path, inputs: dict) -> list[dict]:
    """User data: an .npz with one array per input (rows along the first dimension)."""
    if path.suffix != ".npz":
        raise DataError(f"{path}: expected an .npz file (numpy.savez: one array per input)")
    return [feed_from_arrays(inputs, _npz(path), str(path))]


def feeds_from_version_tests(tests_dir: Path, inputs: dict) -> list[dict]:
    """The inputs of a version's own tests (every case and slice check's .npz)."""
    try:
        manifest = json.loads((tests_dir / "tests.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{tests_dir / 'tests.json'}: {exc}") from None
    feeds = []
    for entry in list(manifest.get("cases", [])) + list(manifest.get("slices", [])):
        data = str(entry.get("data", ""))
        if data and data not in {f.get("_file") for f in feeds}:
            feed = feed_from_arrays(inputs, _npz(tests_dir / data), f"tests/{data}")
            feed["_file"] = data
            feeds.append(feed)
    for feed in feeds:
        del feed["_file"]
    return feeds


def rows_of(feed: dict) -> int:
    return len(next(iter(feed.values()))) if feed else 0


# -- running ------------------------------------------------------------------------


def run_rows(session, names: list[str], feed: dict, batch: int) -> dict[str, np.ndarray]:
    """Every row of ``feed`` in batches of at most ``batch`` (0: one call)."""
    rows = rows_of(feed)
    if batch <= 0 or rows <= batch:
        return dict(zip(names, session.run(names, feed)))
    parts = [dict(zip(names, session.run(names, {k: v[i:i + batch] for k, v in feed.items()})))
             for i in range(0, rows, batch)]
    return {n: np.concatenate([p[n] for p in parts]) for n in names}


def compare(original, optimized, names: list[str], feeds: list[dict], batch: int) -> Accuracy:
    acc = Accuracy({n: OutputDiff(n) for n in names})
    for feed in feeds:
        ref = run_rows(original, names, feed, batch)
        new = run_rows(optimized, names, feed, batch)
        for n in names:
            acc.outputs[n].add(ref[n], new[n])
        acc.rows += rows_of(feed) if batch > 0 else 1
    return acc


def batch_feed(feed: dict, batch: int) -> dict:
    """``batch`` rows out of ``feed``: its first rows, repeated when it has fewer."""
    rows = rows_of(feed)
    reps = -(-batch // rows)
    return {k: (np.concatenate([v] * reps) if reps > 1 else v)[:batch] for k, v in feed.items()}


def speed(original, optimized, names: list[str], feed: dict, batches, seconds: float
          ) -> list[Speed]:
    """Rows per second of each model at each batch size; ``seconds`` per batch size
    in all, shared by the two models in alternating rounds."""
    results = []
    for batch in batches:
        part = batch_feed(feed, batch) if batch else feed
        rows = batch or 1
        times: dict[int, list[float]] = {0: [], 1: []}
        for session in (original, optimized):  # warm-up: first runs allocate
            for _ in range(3):
                session.run(names, part)
        rounds = 6
        deadline = time.perf_counter() + seconds
        for r in range(rounds):
            for which, session in ((0, original), (1, optimized)):
                stop = time.perf_counter() + max(seconds / (2 * rounds), 0.005)
                while True:
                    t0 = time.perf_counter()
                    session.run(names, part)
                    times[which].append(time.perf_counter() - t0)
                    if time.perf_counter() >= stop:
                        break
            if time.perf_counter() >= deadline and r >= 1:
                break
        p50 = [float(np.median(times[i])) for i in (0, 1)]
        results.append(Speed(rows, rows / p50[0], rows / p50[1], p50[0] * 1e3, p50[1] * 1e3))
    return results
