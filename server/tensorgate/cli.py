"""The ``tensorgate`` command."""

from __future__ import annotations

import argparse
import sys

from tensorgate import __version__
from tensorgate.settings import add_arguments, from_sources


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensorgate",
        description="KServe v2 / Triton gRPC inference server for ONNX models.",
    )
    parser.add_argument("--version", action="version", version=f"tensorgate {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = verbs.add_parser(
        "serve",
        help="serve a model repository (the bundled demo models by default)",
        description="Serve a Triton-layout model repository over the v2 gRPC protocol. "
        "Every flag can also be set as TENSORGATE_<NAME> in the environment; the flag wins.",
    )
    add_arguments(serve)
    from tensorgate import routes_cli

    routes_cli.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verb == "serve":
        try:
            settings = from_sources(args)
        except ValueError as exc:
            print(f"tensorgate serve: {exc}", file=sys.stderr)
            return 2
        from tensorgate.observability.logs import configure

        configure(settings.log_level, settings.log_format)
        from tensorgate.runtime.heap import limit_malloc_arenas

        limit_malloc_arenas()  # before grpc, ONNX Runtime and the workers start threads
        import uvloop

        from tensorgate.app import serve

        return uvloop.run(serve(settings))
    if args.verb == "routes":
        from tensorgate import routes_cli

        return routes_cli.main(args)
    return 2
