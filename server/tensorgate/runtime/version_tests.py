"""A version's own tests: the checks it must pass before it takes any traffic.

``<model>/<version>/tests/tests.json`` lists them; arrays live beside it in ``.npz``
files (``numpy.savez``)::

    {
      "cases": [
        {"name": "known answer", "data": "case1.npz", "atol": 1e-5, "rtol": 0}
      ],
      "slices": [
        {"name": "accuracy", "data": "labelled.npz", "output": "OUTPUT0",
         "labels": "label", "metric": "accuracy", "min": 0.9, "slice_by": "segment"}
      ]
    }

A case's ``.npz`` holds every model input by name and the expected outputs as
``expected/<OUTPUT>`` (outputs it leaves out are not compared); its answer must match
within ``atol + rtol * |expected|`` at every element. A slice check's ``.npz`` holds the
inputs of a labelled set, the labels (``labels``: an array name) and, optionally, a
slice key per row (``slice_by``); its ``metric`` over the output is computed on the
whole set and on each slice, and each must reach its threshold: ``min`` for
``accuracy`` (argmax over the last dimension, or a score >= 0.5 for one column, against
integer labels) and ``auc`` (binary labels, the score in the output's last column), or
``max`` for ``max_error``, ``mae`` and ``rmse`` (against the labels as targets). Rows
run in batches of at most the model's max_batch_size.

They run at load, after the warm-up, on the version's own sessions; a failure refuses
the version with which case or slice failed and by how much, so it never serves and
never replaces the one serving. ``tensorgate test`` runs the same checks offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tensorgate.errors import ModelLoadError

MANIFEST = "tests.json"
_MIN_METRICS = ("accuracy", "auc")
_MAX_METRICS = ("max_error", "mae", "rmse")


@dataclass
class CheckResult:
    kind: str  # "case" or "slice"
    name: str
    passed: bool
    detail: str  # what was measured against what


def manifest_path(files, version: int) -> Path:
    return files.file(str(version), "tests", MANIFEST, what="version tests")


def _load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"version tests: {what}: cannot read {path.name}: {exc}") from None


def _run_rows(model, feed: dict[str, np.ndarray], run) -> dict[str, np.ndarray]:
    """Every row of ``feed`` through ``run`` in batches the model takes."""
    mbs = model.max_batch_size
    if mbs <= 0:
        return run(feed)
    rows = len(next(iter(feed.values())))
    parts = [run({k: v[i:i + mbs] for k, v in feed.items()}) for i in range(0, rows, mbs)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _feed(model, arrays: dict, what: str) -> dict[str, np.ndarray]:
    feed = {}
    for name, spec in model.inputs.items():
        if name not in arrays:
            if spec.optional:
                continue
            raise ModelLoadError(f"version tests: {what}: no array for input '{name}'")
        value = arrays[name]
        if spec.dtype.wire == "BYTES":  # ONNX Runtime takes string elements as text
            flat = [x.decode() if isinstance(x, bytes) else str(x) for x in value.reshape(-1)]
            feed[name] = np.array(flat, dtype=object).reshape(value.shape)
        else:
            feed[name] = value.astype(spec.dtype.numpy, copy=False)
    return feed


def _metric(metric: str, out: np.ndarray, labels: np.ndarray) -> float:
    if metric == "accuracy":
        if out.ndim > 1 and out.shape[-1] > 1:
            predicted = out.reshape(len(out), -1).argmax(axis=-1)
        else:
            predicted = (out.reshape(len(out)) >= 0.5).astype(np.int64)
        return float(np.mean(predicted == labels.reshape(len(labels)).astype(np.int64)))
    if metric == "auc":
        scores = out.reshape(len(out), -1)[:, -1].astype(np.float64)
        truth = labels.reshape(len(labels)).astype(bool)
        positives, negatives = scores[truth], scores[~truth]
        if not len(positives) or not len(negatives):
            return float("nan")
        # The probability a positive scores above a negative (ties count half): the
        # Mann-Whitney statistic over ranks, tied scores sharing their mean rank.
        both = np.concatenate([negatives, positives])
        order = np.argsort(both, kind="mergesort")
        ranks = np.empty(len(order))
        ranks[order] = np.arange(1, len(order) + 1)
        _, groups, sizes = np.unique(both, return_inverse=True, return_counts=True)
        ranks = (np.bincount(groups, weights=ranks) / sizes)[groups]
        pos_ranks = ranks[len(negatives):]
        return float((pos_ranks.sum() - len(positives) * (len(positives) + 1) / 2)
                     / (len(positives) * len(negatives)))
    diff = out.astype(np.float64).reshape(len(out), -1) - \
        labels.astype(np.float64).reshape(len(labels), -1)
    if metric == "max_error":
        return float(np.max(np.abs(diff))) if diff.size else 0.0
    if metric == "mae":
        return float(np.mean(np.abs(diff))) if diff.size else 0.0
    return float(np.sqrt(np.mean(diff ** 2))) if diff.size else 0.0


def run_version_tests(model, directory: Path, run) -> list[CheckResult]:
    """Every check of ``directory/tests.json`` on ``model`` (its specs) with ``run``
    (feed -> outputs by name); raises ModelLoadError for a malformed manifest."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"version tests: {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or not set(manifest) <= {"cases", "slices"}:
        raise ModelLoadError(f"version tests: {MANIFEST} holds 'cases' and 'slices' only")
    results = []
    for case in manifest.get("cases", []):
        name = case.get("name") or case.get("data", "?")
        what = f"case '{name}'"
        arrays = _load_npz(directory / str(case.get("data", "")), what)
        expected = {k[len("expected/"):]: v for k, v in arrays.items() if k.startswith("expected/")}
        if not expected:
            raise ModelLoadError(f"version tests: {what}: no expected/<OUTPUT> arrays")
        unknown = [k for k in expected if k not in model.outputs]
        if unknown:
            raise ModelLoadError(f"version tests: {what}: no output {', '.join(unknown)}")
        outputs = _run_rows(model, _feed(model, arrays, what), run)
        atol, rtol = float(case.get("atol", 1e-5)), float(case.get("rtol", 0.0))
        failures = []
        for out_name, want in expected.items():
            got = outputs[out_name]
            if got.shape != want.shape:
                failures.append(f"{out_name} has shape {list(got.shape)}, expected "
                                f"{list(want.shape)}")
                continue
            if want.dtype.kind in "fc":
                err = np.abs(got.astype(np.float64) - want.astype(np.float64))
                bound = atol + rtol * np.abs(want.astype(np.float64))
                over = err > bound
                if over.any():
                    worst = np.unravel_index(int(np.argmax(err - bound)), err.shape)
                    where = [int(i) for i in worst]
                    failures.append(
                        f"{out_name} differs by {float(err[worst]):.4g} at {where} "
                        f"(allowed {float(bound[worst]):.4g}; {int(over.sum())} of "
                        f"{over.size} elements over)"
                    )
            elif not np.array_equal(got, want):
                failures.append(f"{out_name} is not equal to the expected values")
        results.append(CheckResult("case", name, not failures,
                                   "; ".join(failures) or "all outputs within tolerance"))
    for check in manifest.get("slices", []):
        name = check.get("name") or check.get("metric", "?")
        what = f"slice check '{name}'"
        metric = check.get("metric")
        if metric not in _MIN_METRICS + _MAX_METRICS:
            raise ModelLoadError(
                f"version tests: {what}: metric must be one of "
                f"{', '.join(_MIN_METRICS + _MAX_METRICS)}"
            )
        bound_key = "min" if metric in _MIN_METRICS else "max"
        if bound_key not in check:
            raise ModelLoadError(f"version tests: {what}: {metric} needs '{bound_key}'")
        bound = float(check[bound_key])
        arrays = _load_npz(directory / str(check.get("data", "")), what)
        output = check.get("output") or next(iter(model.outputs))
        if output not in model.outputs:
            raise ModelLoadError(f"version tests: {what}: no output '{output}'")
        labels = arrays.get(check.get("labels", "labels"))
        if labels is None:
            raise ModelLoadError(f"version tests: {what}: no labels array "
                                 f"'{check.get('labels', 'labels')}'")
        out = _run_rows(model, _feed(model, arrays, what), run)[output]
        groups = [("all rows", np.ones(len(labels), bool))]
        key = check.get("slice_by")
        if key:
            if key not in arrays:
                raise ModelLoadError(f"version tests: {what}: no slice array '{key}'")
            for value in np.unique(arrays[key]):
                groups.append((f"{key}={value}", arrays[key] == value))
        failures, seen = [], []
        for label, mask in groups:
            value = _metric(metric, out[mask], labels[mask])
            seen.append(f"{label}: {value:.4g}")
            good = value >= bound if bound_key == "min" else value <= bound
            if not good:  # nan (e.g. AUC of a one-class slice) fails too
                failures.append(f"{metric} {value:.4g} on {label} ({int(mask.sum())} rows), "
                                f"needs {'>=' if bound_key == 'min' else '<='} {bound:g}")
        results.append(CheckResult("slice", name, not failures,
                                   "; ".join(failures) or ", ".join(seen)))
    return results


def gate(model, directory: Path, run) -> None:
    """Run the version's tests; ModelLoadError naming every failed check if any fails."""
    results = run_version_tests(model, directory, run)
    failed = [r for r in results if not r.passed]
    if failed:
        raise ModelLoadError(
            "version tests failed: " + "; ".join(f"{r.kind} '{r.name}': {r.detail}"
                                                  for r in failed)
        )


def test_command(root: str, name: str, version: int | None, as_json: bool) -> int:
    """``tensorgate test``: load one version as the server would, run its tests, print
    every check; the exit status."""
    import sys

    from tensorgate.repository.config import parse_config
    from tensorgate.repository.layout import versions_on_disk
    from tensorgate.repository.paths import RepositoryPaths
    from tensorgate.runtime.model import ModelVersion
    from tensorgate.settings import Settings

    report: dict = {"model": name, "version": version, "checks": []}

    def finish(status: str, code: int) -> int:
        report["status"] = status
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            for c in report["checks"]:
                print(f"{'PASS' if c['passed'] else 'FAIL'} {c['kind']} '{c['name']}': "
                      f"{c['detail']}")
            print(f"{name}:{report['version']}: {status}")
        return code

    try:
        paths = RepositoryPaths(Path(root))
        files = paths.model_files(paths.model_dir(name))
        if not files.directory.is_dir():
            print(f"tensorgate test: no model '{name}' in {root}", file=sys.stderr)
            return 2
        if version is None:
            on_disk = versions_on_disk(files.directory)
            if not on_disk:
                print(f"tensorgate test: model '{name}' has no version directories",
                      file=sys.stderr)
                return 2
            version = max(on_disk)
        report["version"] = version
        parsed = parse_config(files.config())
        manifest = manifest_path(files, version)
        if not manifest.exists():
            return finish(f"no version tests ({manifest} does not exist)", 0)
        model = ModelVersion.load(name, version, files, parsed,
                                  Settings().default_max_batch_size)
    except ModelLoadError as exc:
        report["error"] = str(exc)
        return finish(f"FAILED: {exc}", 1)
    except Exception as exc:  # a bad name or path: the message says which
        print(f"tensorgate test: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2
    names = model.output_names
    session = model._sessions[0]
    results = run_version_tests(
        model, manifest.parent, lambda feed: dict(zip(names, session.run(names, feed)))
    )
    report["checks"] = [r.__dict__ for r in results]
    return finish("passed", 0)
