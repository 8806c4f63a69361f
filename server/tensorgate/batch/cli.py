"""``tensorgate batch``: offline inference over a table with a repository's model version.

  tensorgate batch --model-repository DIR --model NAME [--version N | --route NAME]
                   --input PATH --output PATH [--map COLUMN=INPUT ...]
                   [--passthrough COLS] [--batch-size N] [--ray [ADDRESS]]

Exit status: 0 when every row ran, 1 when some rows failed (they are in the errors
file, and the summary counts them), 2 when the job could not start (the message names
the argument, column or model at fault; nothing was run).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

FORMATS = ("auto", "parquet", "csv", "jsonl", "npy", "npz")


def demo_repository() -> Path:
    """The bundled demo repository (what `serve` serves without --model-repository)."""
    from importlib import resources

    return Path(str(resources.files("tensorgate") / "demo_repository"))


def _positive(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1 << 24:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..{1 << 24}")
    return value


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "batch",
        help="run a model version over a table (Parquet, CSV, JSON Lines, NPY/NPZ) and "
        "write Parquet; resumable; --ray scales it out on Ray Data",
        description="Offline batch inference with the runtime a model version has when "
        "served (same config.pbtxt, session options, instances, dynamic batcher). Reads "
        "--input in chunks, maps columns to the model's inputs, writes every other column "
        "through unchanged and one column per output; rows that cannot be converted or "
        "run go to an errors file with their row id and the reason. A run killed at any "
        "point continues where it stopped when started again with the same arguments. "
        "Exit status: 0 all rows ran, 1 some rows failed, 2 the job could not start.",
    )
    p.add_argument("--model-repository", metavar="DIR", default=None,
                   help="Triton-layout model repository (default: the bundled demo "
                   "repository)")
    p.add_argument("--model", metavar="NAME", default=None,
                   help="the model to run (required unless --route names it)")
    p.add_argument("--version", metavar="N", default="",
                   help="model version (default: the model's default version, the newest "
                   "its version policy serves)")
    p.add_argument("--route", metavar="NAME", default=None,
                   help="run a saved route's primary target (its heaviest) instead of "
                   "--model/--version (default: none)")
    p.add_argument("--state-dir", metavar="DIR", type=Path, default=None,
                   help="where `serve --state-dir` keeps routes.json (default: "
                   "<repository>/.tensorgate)")
    p.add_argument("--input", metavar="PATH", required=True,
                   help="a file, a directory of files or a glob: Parquet, CSV/TSV, JSON "
                   "Lines, NPY or NPZ (required)")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="input format (default: auto, from each file's extension)")
    p.add_argument("--output", metavar="PATH", type=Path, required=True,
                   help="a .parquet file, or a directory of Parquet part files (required)")
    p.add_argument("--map", metavar="COLUMN=INPUT", action="append", default=[],
                   help="feed INPUT from COLUMN (repeatable; COL1,COL2=INPUT puts scalar "
                   "columns side by side; default: each input from the column of its name)")
    p.add_argument("--passthrough", metavar="COLS", default=None,
                   help="comma-separated columns copied to the output (default: every "
                   "column not fed to the model; '' for none)")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="rows per request (default: the config's largest preferred batch "
                   "size, else max_batch_size; at most max_batch_size)")
    p.add_argument("--chunk-rows", type=_positive, default=None,
                   help="rows read, run and committed together; the unit of resume and of "
                   "memory (default: about 32 MiB of input, at most 16384 rows, 2048 for "
                   "variable-length inputs)")
    p.add_argument("--errors", metavar="PATH", type=Path, default=None,
                   help="JSON Lines file of the rows that failed (default: _errors.jsonl in "
                   "the output directory, or OUTPUT.errors.jsonl beside a file)")
    p.add_argument("--summary", metavar="PATH", type=Path, default=None,
                   help="machine-readable summary (default: _summary.json in the output "
                   "directory, or OUTPUT.summary.json beside a file)")
    p.add_argument("--overwrite", action="store_true",
                   help="remove a previous run's output first instead of continuing it "
                   "(default: continue it)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar with rows/s and ETA on stderr (default: auto, when "
                   "stderr is a terminal)")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="local", default=None,
                   help="run on Ray Data: a local cluster, or an existing one by address "
                   "(`--ray auto`, `--ray ray://HOST:10001`) (default: no Ray)")
    p.add_argument("--ray-actors", type=_positive, default=None,
                   help="with --ray: model actors, each loading the version once (default: "
                   "the cluster's CPUs divided by the version's instances)")
    p.add_argument("--default-max-batch-size", type=_positive, default=4,
                   help="max_batch_size for a model whose config omits it, as `serve` "
                   "(default: 4)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="warning", help="log level on stderr (default: warning)")


def _job(args):
    from tensorgate.batch.common import BatchError
    from tensorgate.batch.runner import Job

    if not args.model and not args.route:
        raise BatchError("name the model: --model NAME (or --route NAME)")
    if args.version and args.route:
        raise BatchError("--version and --route: the route picks the version; give one")
    passthrough = None
    if args.passthrough is not None:
        passthrough = [c.strip() for c in args.passthrough.split(",") if c.strip()]
    progress = sys.stderr.isatty() if args.progress == "auto" else args.progress == "on"
    return Job(
        repository=Path(args.model_repository or demo_repository()), inputs=args.input,
        output=args.output, model=args.model, version=args.version, route=args.route,
        state_dir=args.state_dir, input_format=args.format, maps=args.map,
        passthrough=passthrough, batch_size=args.batch_size, chunk_rows=args.chunk_rows,
        errors=args.errors, summary=args.summary, overwrite=args.overwrite,
        progress=progress, default_max_batch_size=args.default_max_batch_size,
    )


def _report(summary: dict) -> None:
    failed = summary.get("rows_failed", 0)
    line = (f"tensorgate batch: {summary.get('rows', 0)} rows, {summary.get('rows_ok', 0)} ok, "
            f"{failed} failed")
    if failed:
        line += f" (see {summary.get('errors_file')})"
    if summary.get("rows_per_s") is not None:
        line += (f"; {summary.get('rows_this_run', 0)} rows this run in "
                 f"{summary.get('seconds')} s, {summary['rows_per_s']:,.0f} rows/s")
    if summary.get("rows_resumed"):
        line += f"; {summary['rows_resumed']} rows were done before (resumed)"
    print(line + f" -> {summary.get('output')}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from tensorgate.observability.logs import configure

    configure(args.log_level.upper())
    if args.log_level in ("warning", "error"):
        # A model that fails to load is reported once, by this command, in its words.
        logging.getLogger("tensorgate.repository").setLevel(logging.CRITICAL)
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        print("tensorgate batch: needs pyarrow: pip install 'tensorgate[batch]'", file=sys.stderr)
        return 2
    from tensorgate.batch.common import BatchError

    try:
        job = _job(args)
        if args.ray:
            from tensorgate.batch.ray import run_on_ray

            result = run_on_ray(job, args.ray, args.ray_actors)
        else:
            from tensorgate.runtime.heap import limit_malloc_arenas

            limit_malloc_arenas()  # before ONNX Runtime and the workers start threads
            import uvloop

            from tensorgate.batch.runner import run

            result = uvloop.run(run(job))
    except BatchError as exc:
        print(f"tensorgate batch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tensorgate batch: interrupted; run it again to continue", file=sys.stderr)
        return 130
    _report(result.summary)
    if args.log_level == "debug":
        print(json.dumps(result.summary, indent=2), file=sys.stderr)
    logging.shutdown()
    return 1 if result.failed else 0
