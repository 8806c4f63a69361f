"""The ``tensorgate`` command."""

from __future__ import annotations

import argparse
import json
import sys

from tensorgate import __version__
from tensorgate.settings import add_arguments, from_sources, triton_flag_error


def program_version(parser: argparse.ArgumentParser) -> None:
    """``--version`` (the program's) after a verb too, where the verb has no
    ``--version`` of its own (test, profile, batch and optimize take a model version)."""
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}",
                        help="print the program's version and exit")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorgate",
        description="KServe v2 / Triton inference server for ONNX models (gRPC and HTTP/REST).",
    )
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = verbs.add_parser(
        "serve",
        help="serve a model repository (the bundled demo models by default)",
        description="Serve a Triton-layout model repository over the v2 protocol (gRPC and "
        "HTTP/REST). Every flag can also be set as TENSORGATE_<NAME> in the environment; "
        "the flag wins. Triton's flag names work where TensorGate has the feature; the "
        "others are refused with TensorGate's equivalent named.",
    )
    add_arguments(serve)
    program_version(serve)
    health = verbs.add_parser(
        "health",
        help="exit 0 when a server on these settings answers SERVING (a container "
        "HEALTHCHECK)",
        description="Check grpc.health.v1 on the gRPC port that `serve` with the same flags "
        "and TENSORGATE_* environment listens on, over its TLS when it has one (trusting "
        "its own --tls-cert chain, or the CA bundle in TENSORGATE_HEALTH_CA). Exit 0 when "
        "SERVING, 1 otherwise, and print what was seen.",
    )
    add_arguments(health)
    health.add_argument("--service", default="",
                        help="a service or model name to check (default: the server)")
    health.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the answer (default: 3)")
    program_version(health)
    info = verbs.add_parser(
        "info",
        help="what this installation has: front ends, ONNX Runtime and its working "
        "execution providers, packages, extras",
        description="Print the TensorGate version, the front ends built (grpc++'s version "
        "for the native one), ONNX Runtime's version and the execution providers that "
        "really run a session here, the versions of the packages it serves with, and "
        "the optional extras installed.",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    program_version(info)
    test = verbs.add_parser(
        "test",
        help="run a model version's own tests (<version>/tests/tests.json) offline",
        description="Load one model version as `serve` would (config, session options, "
        "warm-up) and run its tests: the cases and slice checks of "
        "<model>/<version>/tests/tests.json (see README, 'A version's own tests'). Exit 0 "
        "when they pass (or there are none), 1 when one fails or the version does not "
        "load, 2 for a bad argument.",
    )
    _version_arguments(test)
    test.add_argument("--json", action="store_true", help="print JSON instead of text")
    profile = verbs.add_parser(
        "profile",
        help="write a model version's drift reference profile (<version>/profile.json) "
        "from reference data",
        description="Load one model version as `serve` would, run the reference data "
        "through it and write <model>/<version>/profile.json: per input and output "
        "feature a histogram (quantile bins), summary statistics and a sample (see "
        "README, 'Drift monitoring'). A served version with a profile is monitored for "
        "drift. Exit 0 when written, 1 when the data or the version fails, 2 for a bad "
        "argument.",
    )
    _version_arguments(profile)
    profile.add_argument("--data", required=True, metavar="PATH",
                         help="reference inputs: .npz (arrays named as the inputs), .npy "
                         "(one input), or with pyarrow .parquet, .csv, .jsonl (a column "
                         "per input)")
    profile.add_argument("--output", metavar="PATH", default=None,
                         help="where to write (default: <model>/<version>/profile.json)")
    profile.add_argument("--bins", type=int, default=10,
                         help="histogram bins per feature, at reference quantiles "
                         "(default: 10)")
    profile.add_argument("--sample", type=int, default=1000,
                         help="reference values kept per feature for the KS statistic "
                         "(default: 1000)")
    profile.add_argument("--categories", type=int, default=20,
                         help="BYTES tensors: most frequent values kept, the rest "
                         "counted as other (default: 20)")
    profile.add_argument("--max-rows", type=int, default=100_000,
                         help="read at most this many rows of the data (default: 100000)")
    profile.add_argument("--json", action="store_true", help="print JSON instead of text")
    from tensorgate import routes_cli

    routes_cli.add_parser(verbs)
    from tensorgate.batch import cli as batch_cli

    batch_cli.add_parser(verbs)
    from tensorgate import optimize

    optimize.add_parser(verbs)
    return parser


def _version_arguments(parser: argparse.ArgumentParser) -> None:
    """--model-repository, --model, --version: one version on disk (test, profile)."""
    parser.add_argument("--model-repository", required=True, metavar="DIR",
                        help="the model repository")
    parser.add_argument("--model", required=True, help="the model's name")
    parser.add_argument("--version", type=int, default=None,
                        help="the version (default: the highest on disk)")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        message = triton_flag_error(unknown)
        parser.error(message or f"unrecognized arguments: {' '.join(unknown)}")
    if args.verb in ("serve", "health"):
        try:
            settings = from_sources(args)
        except ValueError as exc:
            print(f"tensorgate {args.verb}: {exc}", file=sys.stderr)
            return 2
    if args.verb == "serve":
        from tensorgate.observability.logs import configure

        configure(settings.log_level, settings.log_format)
        from tensorgate.runtime.heap import limit_malloc_arenas

        limit_malloc_arenas()  # before grpc, ONNX Runtime and the workers start threads
        import uvloop

        from tensorgate.app import serve

        return uvloop.run(serve(settings))
    if args.verb == "health":
        from tensorgate.diagnostics import check_health

        try:
            serving, seen = check_health(settings, args.timeout, args.service)
        except OSError as exc:
            print(f"tensorgate health: {exc}", file=sys.stderr)
            return 1
        print(seen)
        return 0 if serving else 1
    if args.verb == "info":
        from tensorgate.diagnostics import installation_report, print_report

        report = installation_report()
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_report(report)
        return 0
    if args.verb == "test":
        from tensorgate.runtime.version_tests import test_command

        return test_command(args.model_repository, args.model, args.version, args.json)
    if args.verb == "profile":
        from tensorgate.observability.drift.profile import profile_command

        return profile_command(args.model_repository, args.model, args.version, args.data,
                               args.output, args.bins, args.sample, args.categories,
                               args.max_rows, args.json)
    if args.verb == "routes":
        from tensorgate import routes_cli

        return routes_cli.main(args)
    if args.verb == "batch":
        from tensorgate.batch import cli as batch_cli

        return batch_cli.main(args)
    if args.verb == "optimize":
        from tensorgate import optimize

        return optimize.main(args)
    return 2
