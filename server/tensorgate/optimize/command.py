"""``tensorgate optimize``: write an INT8 (dynamic) or FP16 version of a model version
next to it, after measuring what it costs in accuracy and what it gains in speed."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tensorgate.optimize import convert as conv
from tensorgate.optimize import measure

DEFAULT_MAX_ERROR = 0.05
RECORD_FILE = "optimize.json"


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "optimize",
        help="write an INT8-dynamic or FP16 version of a model version, measured against "
        "the original",
        description="Convert one version of a repository model (ONNX Runtime's dynamic "
        "quantisation, or FP16 with onnxconverter-common keeping the inputs' and outputs' "
        "types), run it and the original on the same data (--calibration, else the "
        "version's own tests), print the accuracy difference (max and mean absolute, "
        "top-1 agreement for classifiers) and the speed of both (in-process ONNX Runtime, "
        "batch 1 and 32), and write it as a new version with a record (optimize.json) "
        "unless its error passes --max-error (or the version's tests fail), which --force "
        "overrides. --rollout then puts it on trial on a running server. Exit 0 when "
        "written, 1 when refused or failed, 2 for a bad argument (see README, "
        "'Optimising a version').",
    )
    p.add_argument("--model-repository", required=True, metavar="DIR", help="the model repository")
    p.add_argument("--model", required=True, help="the model's name")
    p.add_argument("--version", type=int, default=None,
                   help="the version to optimise (default: the highest on disk)")
    p.add_argument("--to", required=True, choices=conv.METHODS, help="what to make")
    p.add_argument("--calibration", "--data", metavar="PATH", default=None,
                   help="evaluation data: an .npz with one array per input, rows along the "
                   "first dimension (default: the inputs of the version's own tests)")
    p.add_argument("--max-error", type=float, default=DEFAULT_MAX_ERROR,
                   help="largest absolute difference from the original's outputs allowed "
                   f"on the data (default {DEFAULT_MAX_ERROR:g})")
    p.add_argument("--min-top1-agreement", type=float, default=0.0,
                   help="for classifier-like outputs, the least share of rows whose top-1 "
                   "class must agree with the original's (0..1; default 0: not checked)")
    p.add_argument("--force", action="store_true",
                   help="write the version even when it exceeds the limits or fails the "
                   "version's tests (the record says so)")
    p.add_argument("--output-version", type=int, default=None,
                   help="the new version's number (default: the highest on disk + 1)")
    p.add_argument("--weight-type", choices=conv.WEIGHT_TYPES, default="qint8",
                   help="int8-dynamic: signed or unsigned 8-bit weights (default qint8)")
    p.add_argument("--per-channel", action="store_true",
                   help="int8-dynamic: one scale per output channel")
    p.add_argument("--op-types", default="",
                   help="int8-dynamic: quantise only these operator types, comma-separated "
                   "(e.g. MatMul,Gemm; default: every type the quantiser knows)")
    p.add_argument("--speed-secs", type=float, default=2.0,
                   help="time spent measuring speed per batch size (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    r = p.add_argument_group("putting it on trial on a running server (--rollout)")
    r.add_argument("--rollout", choices=("shadow", "canary"), default=None,
                   help="shadow: mirror a share of the route's requests to the new version "
                   "and compare; canary: that, plus a canary rollout with a "
                   "max_disagreement guard")
    r.add_argument("--route", default=None,
                   help="the route to use (created pinned to the original when absent); "
                   "required with --rollout")
    r.add_argument("--url", default=os.environ.get("TENSORGATE_URL", "127.0.0.1:8001"),
                   help="the server's gRPC address (env TENSORGATE_URL; default "
                   "127.0.0.1:8001)")
    r.add_argument("--token", default=os.environ.get("TENSORGATE_TOKEN"),
                   help="bearer token with the admin role (env TENSORGATE_TOKEN)")
    r.add_argument("--tls-ca", metavar="PEM", default=None, help="connect over TLS, trusting it")
    r.add_argument("--timeout", type=float, default=10.0,
                   help="seconds per control-plane call (default 10)")
    r.add_argument("--wait-secs", type=float, default=60.0,
                   help="how long the two versions may take to become ready (default 60)")
    r.add_argument("--shadow-fraction", type=float, default=0.25,
                   help="share of the route's requests mirrored to the new version "
                   "(default 0.25)")
    r.add_argument("--shadow-atol", type=float, default=None,
                   help="absolute difference that still agrees (default: --max-error)")
    r.add_argument("--max-disagreement", type=float, default=0.01,
                   help="canary: roll back when this share of comparisons disagrees "
                   "(default 0.01)")
    r.add_argument("--stages", default="5,25,50,100",
                   help="canary: traffic percentages (default 5,25,50,100)")
    r.add_argument("--hold-secs", type=float, default=60.0,
                   help="canary: time at each stage (default 60)")
    r.add_argument("--min-requests", type=int, default=20,
                   help="canary: candidate requests a stage needs (default 20)")
    r.add_argument("--auto-promote", action="store_true",
                   help="canary: promote after the last stage without a promote command")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _versions(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


class Refused(Exception):
    pass


def optimize(args) -> dict:
    """Convert, measure and (unless refused) write; the record. Raises ValueError for a
    bad argument, Refused (the record in args) when limits are passed, and
    ModelLoadError, ConversionError or DataError when something fails."""
    import onnxruntime as ort

    from tensorgate import __version__
    from tensorgate.errors import ModelLoadError
    from tensorgate.repository import lineage
    from tensorgate.repository.config import parse_config
    from tensorgate.repository.layout import select_versions, versions_on_disk
    from tensorgate.repository.paths import RepositoryPaths
    from tensorgate.runtime import version_tests
    from tensorgate.runtime.model import ModelVersion
    from tensorgate.runtime.session import register_op_libraries, session_options
    from tensorgate.settings import Settings

    if args.max_error < 0 or not 0 <= args.min_top1_agreement <= 1 or args.speed_secs < 0:
        raise ValueError("--max-error and --speed-secs must be >= 0, --min-top1-agreement "
                         "in 0..1")
    if args.rollout and not args.route:
        raise ValueError("--rollout needs --route (the route the trial runs on)")
    paths = RepositoryPaths(Path(args.model_repository))
    files = paths.model_files(paths.model_dir(args.model))
    if not files.directory.is_dir():
        raise ValueError(f"no model '{args.model}' in {args.model_repository}")
    on_disk = versions_on_disk(files.directory)
    version = args.version if args.version is not None else (max(on_disk) if on_disk else None)
    if version is None or version not in on_disk:
        raise ValueError(f"model '{args.model}' has no version {version} (on disk: {on_disk})")
    new_version = args.output_version or max(on_disk) + 1
    if new_version in on_disk or new_version <= 0:
        raise ValueError(f"--output-version {new_version}: exists or is not a version number")
    parsed = parse_config(files.config())
    filename = parsed.config.default_model_filename or "model.onnx"
    source = files.model(version, filename)
    original_bytes = source.read_bytes()
    # Loaded as the server would (config, warm-up, its own tests): its specs say what the
    # data must hold, and an original that does not load is no baseline.
    try:
        original = ModelVersion.load(args.model, version, files, parsed,
                                     Settings().default_max_batch_size)
    except ModelLoadError as exc:
        raise ModelLoadError(f"the original {args.model}:{version} does not load: {exc}") from None
    tests_dir = version_tests.manifest_path(files, version).parent
    if args.calibration:
        feeds = measure.load_feeds(Path(args.calibration), original.inputs)
        data_source = str(args.calibration)
    elif (tests_dir / version_tests.MANIFEST).exists():
        feeds = measure.feeds_from_version_tests(tests_dir, original.inputs)
        data_source = f"{args.model}/{version}/tests (the version's own tests)"
    else:
        raise ValueError(
            f"no data to measure on: give --calibration FILE.npz (one array per input) or "
            f"add tests to {args.model}/{version}/tests/tests.json"
        )
    started = time.monotonic()
    op_types = tuple(t.strip() for t in args.op_types.split(",") if t.strip())
    optimized_bytes = conv.convert(source, args.to, args.weight_type, args.per_channel, op_types)
    convert_secs = time.monotonic() - started

    opts = session_options(parsed.config)
    register_op_libraries(opts, parsed.config, files)
    cpu = ["CPUExecutionProvider"]
    s_orig = ort.InferenceSession(original_bytes, sess_options=opts, providers=cpu)
    try:
        s_new = ort.InferenceSession(optimized_bytes, sess_options=opts, providers=cpu)
    except Exception as exc:  # onnxruntime's own types
        raise conv.ConversionError(f"onnxruntime cannot load the result: {exc}") from None
    io = [[(t.name, t.type) for t in getattr(s, kind)()] for s in (s_orig, s_new)
          for kind in ("get_inputs", "get_outputs")]
    if io[:2] != io[2:]:
        raise conv.ConversionError(
            f"the result's inputs/outputs {io[2:]} differ from the original's {io[:2]}"
        )
    names = original.output_names
    batch = original.max_batch_size
    accuracy = measure.compare(s_orig, s_new, names, feeds, batch)
    tests = []
    if (tests_dir / version_tests.MANIFEST).exists():
        tests = version_tests.run_version_tests(
            original, tests_dir, lambda feed: dict(zip(names, s_new.run(names, feed))))
    batches = sorted({1, min(32, batch)}) if batch > 0 else [0]
    speeds = measure.speed(s_orig, s_new, names, feeds[0], batches, args.speed_secs) \
        if args.speed_secs > 0 else []

    reasons = []
    if accuracy.max_abs > args.max_error:
        reasons.append(f"max absolute difference {accuracy.max_abs:.4g} > --max-error "
                       f"{args.max_error:g}")
    top1 = accuracy.top1_agreement
    if args.min_top1_agreement and top1 is not None and top1 < args.min_top1_agreement:
        reasons.append(f"top-1 agreement {top1:.4f} < --min-top1-agreement "
                       f"{args.min_top1_agreement:g}")
    for t in tests:
        if not t.passed:
            reasons.append(f"version test {t.kind} '{t.name}' fails: {t.detail}")
    policy_serves = select_versions(parsed.config.version_policy, on_disk + [new_version])
    record = {
        "model": args.model,
        "version": new_version,
        "method": args.to,
        "from": {"version": version, "file": filename, "sha256": _sha256(original_bytes),
                 "bytes": len(original_bytes)},
        "result": {"file": filename, "sha256": _sha256(optimized_bytes),
                   "bytes": len(optimized_bytes)},
        "options": {"weight_type": args.weight_type, "per_channel": args.per_channel,
                    "op_types": list(op_types) or "all"}
        if args.to == "int8-dynamic" else {"keep_io_types": True},
        "made_by": {"user": getpass.getuser(), "unix": time.time(),
                    "convert_secs": round(convert_secs, 3),
                    "tensorgate": __version__, "onnxruntime": ort.__version__,
                    "onnx": _versions("onnx"),
                    "onnxconverter_common": _versions("onnxconverter-common")},
        "data": {"source": data_source, "rows": accuracy.rows},
        "accuracy": accuracy.report(),
        "limits": {"max_error": args.max_error, "min_top1_agreement": args.min_top1_agreement},
        "version_tests": [t.__dict__ for t in tests],
        "speed": {"where": "in-process ONNX Runtime on the CPU, the version's session "
                  "options", "batches": [s.report() for s in speeds]},
        "refused": reasons,
        "forced": bool(reasons) and args.force,
        "written": None,
        "version_policy_serves_both": version in policy_serves and new_version in policy_serves,
    }
    if reasons and not args.force:
        raise Refused(record)

    staging = files.directory / f".staging-{new_version}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / filename).write_bytes(optimized_bytes)
        if tests_dir.is_dir():  # the new version must pass what its original passed
            shutil.copytree(tests_dir, staging / "tests")
        entries = dict(lineage.read_version(files, version))
        entries.update({
            "optimize.from_version": str(version),
            "optimize.method": args.to,
            "optimize.max_abs_error": f"{accuracy.max_abs:.6g}",
            "optimize.mean_abs_error": f"{accuracy.mean_abs:.6g}",
        })
        if top1 is not None:
            entries["optimize.top1_agreement"] = f"{top1:.6g}"
        lineage.write(staging, entries)
        record["written"] = str(files.directory / str(new_version))
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        os.replace(staging, files.directory / str(new_version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record


def _fmt_ms(ms: float) -> str:
    return f"{ms:.2f} ms" if ms >= 1 else f"{ms * 1000:.0f} µs"


def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    return f"{x / 1000:.1f}k" if x >= 10_000 else f"{x:.0f}"


def print_text(record: dict, out=sys.stdout) -> None:
    a = record["accuracy"]
    top1 = a.get("top1_agreement")
    print(f"{record['model']}:{record['from']['version']} -> {record['method']}, measured on "
          f"{a['rows']} rows ({record['data']['source']})", file=out)
    print(f"  accuracy: max |diff| {a['max_abs']:.4g}, mean |diff| {a['mean_abs']:.4g}"
          + (f", top-1 agreement {top1 * 100:.2f}%" if top1 is not None else ""), file=out)
    for name, d in a["outputs"].items():
        extra = (f", top-1 {d['top1_agreement'] * 100:.2f}% of {d['top1_rows']} rows"
                 if "top1_agreement" in d else "")
        print(f"    {name}: max {d['max_abs']:.4g}, mean {d['mean_abs']:.4g}{extra}", file=out)
    tests = record["version_tests"]
    if tests:
        failed = [t for t in tests if not t["passed"]]
        print(f"  version tests: {len(tests) - len(failed)} of {len(tests)} pass"
              + "".join(f"; FAIL {t['kind']} '{t['name']}': {t['detail']}" for t in failed),
              file=out)
    for s in record["speed"]["batches"]:
        print(f"  speed at batch {s['batch']}: {_fmt_rate(s['original_rows_per_s'])} -> "
              f"{_fmt_rate(s['optimized_rows_per_s'])} rows/s ({s['ratio']:.2f}x; p50 "
              f"{_fmt_ms(s['original_p50_ms'])} -> {_fmt_ms(s['optimized_p50_ms'])}), "
              "in-process ONNX Runtime", file=out)
    print(f"  size: {record['from']['bytes']:,} -> {record['result']['bytes']:,} bytes", file=out)
    if record["refused"]:
        print(("  over the limits, written anyway (--force): " if record["forced"] else
               "  refused: ") + "; ".join(record["refused"]), file=out)
    if record["written"]:
        print(f"wrote {record['written']} ({record['result']['file']}, {RECORD_FILE}, "
              "lineage.json)", file=out)
        if not record["version_policy_serves_both"]:
            print("  note: the model's version_policy will not serve both versions; for a "
                  "side-by-side trial use version_policy: { all { } } (or latest "
                  "{ num_versions: 2 })", file=out)


def main(args: argparse.Namespace) -> int:
    from tensorgate.errors import ModelLoadError, TensorGateError

    try:
        record = optimize(args)
    except Refused as exc:
        record = exc.args[0]
        if args.json:
            print(json.dumps(record, indent=2))
        else:
            print_text(record)
            print("not written (--force writes it anyway)")
        return 1
    except ValueError as exc:
        print(f"tensorgate optimize: {exc}", file=sys.stderr)
        return 2
    except TensorGateError as exc:  # a bad model name, say
        print(f"tensorgate optimize: {exc.message}", file=sys.stderr)
        return 2
    except (ModelLoadError, conv.ConversionError, measure.DataError, OSError) as exc:
        print(f"tensorgate optimize: {exc}", file=sys.stderr)
        return 1
    if not args.json:
        print_text(record)
    if args.rollout:
        from tensorgate.optimize import rollout

        stages = [float(x) for x in args.stages.split(",") if x.strip()]
        try:
            route = rollout.start(
                args.url, args.token, args.tls_ca, args.timeout, args.model,
                record["from"]["version"], record["version"], args.route, args.rollout,
                args.shadow_fraction,
                args.max_error if args.shadow_atol is None else args.shadow_atol,
                args.max_disagreement, stages, args.hold_secs, args.min_requests,
                args.auto_promote, args.wait_secs,
            )
        except (rollout.RolloutError, OSError) as exc:
            record["rollout"] = {"error": str(exc)}
            if args.json:
                print(json.dumps(record, indent=2))
            print(f"tensorgate optimize: --rollout: {exc} (the version is written)",
                  file=sys.stderr)
            return 1
        record["rollout"] = {"mode": args.rollout, "route": route}
        if not args.json:
            what = ("canary rollout started" if args.rollout == "canary"
                    else "shadowing started")
            print(f"{what} on route {args.route}: {args.model}:{record['from']['version']} "
                  f"serves, {args.model}:{record['version']} is compared on "
                  f"{args.shadow_fraction:g} of its requests (atol "
                  f"{route['shadow']['atol']:g})")
    if args.json:
        print(json.dumps(record, indent=2))
    return 0
