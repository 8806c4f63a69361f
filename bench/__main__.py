"""Command line of the bench harness (bench/README.md, "Harness").

    python -m bench run --url 127.0.0.1:8001 --model simple_mlp --concurrency 1,16
    python -m bench run --url HOST:PORT --scenario tiny_mlp --driver perf_analyzer
    python -m bench agree --url HOST:PORT --model simple_mlp --concurrency 1,16
    python -m bench compare --scenario tiny_mlp --scenario convnet \\
        --servers tensorgate,echo,inprocess,mlserver,pytriton
    python -m bench compare --protocol http --scenario tiny_mlp \\
        --servers tensorgate,pytriton,kserve,mlserver --concurrency 1,16,64

Flags override the scenario file's fields. Every run is bounded: each step lasts at
most warm-up + duration (+ a drain of in-flight requests), and only the URL given is
loaded (compare starts its servers on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.harness.scenario import (Scenario, ScenarioError, load, parse_header_flag,
                                    parse_input_flag, with_overrides)

DEFAULT_SERVERS = "tensorgate,echo,inprocess,mlserver,pytriton"


def _numbers(kind):
    def parse(text: str):
        try:
            return tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}") from None
    return parse


def _scenario_flags(parser: argparse.ArgumentParser, *, with_file: bool = True) -> None:
    if with_file:
        parser.add_argument("--scenario", help="YAML/JSON file, or a name in bench/scenarios/")
    g = parser.add_argument_group("scenario overrides")
    g.add_argument("--model")
    g.add_argument("--version")
    g.add_argument("--concurrency", type=_numbers(int), help="closed-loop levels, e.g. 1,16,64")
    g.add_argument("--rates", type=_numbers(float), help="open-loop requests/s, e.g. 100,500")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--warmup", type=float, dest="warmup_s", help="seconds per step")
    g.add_argument("--duration", type=float, dest="duration_s", help="seconds per step")
    g.add_argument("--requests", type=int, help="requests per step (ends the step early)")
    g.add_argument("--deadline-ms", type=float, help="per-request gRPC deadline")
    g.add_argument("--data", help="random, zeros, or a .npy/.json file")
    g.add_argument("--input", action="append", default=[], metavar="NAME:DTYPE:D1,D2",
                   help="input datatype/shape (shape without the batch dimension)")
    g.add_argument("--header", action="append", default=[], metavar="KEY:VALUE",
                   help="gRPC metadata on every request")
    g.add_argument("--workers", type=int, help="load-generator processes (default: by load)")
    g.add_argument("--verify", action="store_true", default=None,
                   help="parse every response (costs client CPU)")
    g.add_argument("--seed", type=int)


def _scenario_from(args, path: str | None = None) -> Scenario:
    path = path if path is not None else getattr(args, "scenario", None)
    base = load(path) if path else Scenario(name=args.model or "adhoc")
    inputs = dict(parse_input_flag(t) for t in args.input) or None
    headers = dict(parse_header_flag(t) for t in args.header) or None
    return with_overrides(
        base, model=args.model, version=args.version, concurrency=args.concurrency,
        rates=args.rates, batch_size=args.batch_size, warmup_s=args.warmup_s,
        duration_s=args.duration_s, requests=args.requests, deadline_ms=args.deadline_ms,
        data=args.data, inputs=inputs, headers=headers, workers=args.workers,
        verify=args.verify, seed=args.seed)


def _check_url(url: str) -> str:
    # Loopback only: this harness must not load machines it wasn't pointed at by
    # mistake; --allow-remote exists for deliberate use elsewhere.
    host = url.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ScenarioError(f"--url {url}: not loopback (pass --allow-remote to load it)")
    return url


def cmd_run(args) -> int:
    from bench.harness import results
    from bench.harness.runner import run_scenario

    scenario = _scenario_from(args)
    url = args.url if args.allow_remote else _check_url(args.url)
    pids = (lambda: [args.server_pid]) if args.server_pid else None
    driver = args.driver or ("wrk" if args.protocol == "http" else "harness")
    run = run_scenario(url, scenario, server=args.server_name, driver=driver,
                       progress=not args.quiet, server_pids=pids, protocol=args.protocol)
    doc = results.document([run])
    print(results.markdown_steps(doc["runs"]))
    if args.output:
        paths = results.write(doc, Path(args.output), f"Run: {scenario.name}")
        print("\nwrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    return 0


def cmd_agree(args) -> int:
    from bench.harness import agree, results

    scenario = _scenario_from(args)
    url = args.url if args.allow_remote else _check_url(args.url)
    pids = (lambda: [args.server_pid]) if args.server_pid else None
    outcome = agree.agree(url, scenario, repeat=args.repeat, progress=not args.quiet,
                          server=args.server_name, server_pids=pids)
    text = agree.markdown(outcome)
    print(text)
    if args.output:
        doc = results.document(outcome["runs"], agreement=outcome["agreement"],
                               margin=outcome["margin"], comparison_markdown=text)
        paths = results.write(doc, Path(args.output),
                              f"Agreement with perf_analyzer: {scenario.name}")
        print("\nwrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def cmd_compare(args) -> int:
    from bench.harness.compare import compare

    if not args.scenario:
        raise ScenarioError("compare needs --scenario (one per model; may be repeated)")
    scenarios = [_scenario_from(args, path) for path in args.scenario]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    doc, paths = compare(scenarios, servers, Path(args.output) if args.output else None,
                         progress=not args.quiet, ceiling_seconds=args.ceiling_seconds,
                         driver=args.driver, protocol=args.protocol)
    print(doc["comparison_markdown"])
    print("\nwrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def protocol(p):
        p.add_argument("--protocol", choices=("grpc", "http"), default="grpc",
                       help="grpc (default), or http: v2 HTTP/REST with JSON bodies, driven "
                            "by wrk (apt-get install wrk), closed loop only")

    def target(p):
        p.add_argument("--url", required=True,
                       help="HOST:PORT of a KServe v2 endpoint (gRPC; HTTP with --protocol http)")
        p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback URL")
        p.add_argument("--server-name", default="server", help="label in the tables")
        p.add_argument("--server-pid", type=int, help="local server PID, for its CPU per step")
        p.add_argument("--output", help="directory for results.json, results.md, latency.png")
        p.add_argument("--quiet", action="store_true", help="no progress display")
        _scenario_flags(p)

    run = sub.add_parser("run", help="load one endpoint with a scenario")
    target(run)
    protocol(run)
    run.add_argument("--driver", choices=("harness", "perf_analyzer", "wrk"),
                     help="gRPC: harness (default) or perf_analyzer; HTTP: wrk")
    run.add_argument("--json", action="store_true", help="also print the JSON document")
    run.set_defaults(func=cmd_run)

    agree_p = sub.add_parser("agree", help="same steps with our driver and perf_analyzer")
    target(agree_p)
    agree_p.add_argument("--repeat", type=int, default=1, choices=range(1, 6),
                         help="alternating rounds (1-5)")
    agree_p.set_defaults(func=cmd_agree)

    comp = sub.add_parser("compare", help="start each server in turn, one table of ratios")
    comp.add_argument("--scenario", action="append", default=[],
                      help="scenario file or name (repeat for several models)")
    comp.add_argument("--servers", default=DEFAULT_SERVERS,
                      help=f"comma-separated (default {DEFAULT_SERVERS})")
    comp.add_argument("--output", help="directory (default bench/results/<date>-<scenario>/)")
    comp.add_argument("--ceiling-seconds", type=float, default=3.0,
                      help="in-process ONNX Runtime measuring time per batch size")
    comp.add_argument("--driver", choices=("auto", "harness", "perf_analyzer", "wrk"),
                      default="auto",
                      help="auto: over gRPC perf_analyzer for peers that answer ModelConfig "
                           "(when installed), our generator for the others; over HTTP wrk. "
                           "The table names it")
    protocol(comp)
    comp.add_argument("--quiet", action="store_true")
    _scenario_flags(comp, with_file=False)
    comp.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bench.harness.control import ServerError
    from bench.harness.perf_analyzer import PerfAnalyzerError
    from bench.harness.workers import WorkerError
    from bench.harness.wrk import WrkError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScenarioError as exc:  # the request is wrong
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (ServerError, WorkerError, PerfAnalyzerError, WrkError) as exc:  # the run failed
        print(f"bench: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
