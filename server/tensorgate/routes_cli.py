"""``tensorgate routes ...``: the control plane from the command line.

Talks to a running server's tensorgate.v1.RoutingService and prints JSON of one shape
for every action, {"routes": [...], "events": [...]} (the protobuf JSON mapping, every
field present), so scripts can parse what it says. Errors print the server's message
and exit 1. --url, --token, --tls-ca and --timeout go before or after the action.

  tensorgate routes list
  tensorgate routes get NAME
  tensorgate routes set NAME MODEL[:VERSION]=WEIGHT ... [--sticky] [--normalize]
                    [--shadow MODEL[:VERSION]@FRACTION] [--shadow-atol X]
  tensorgate routes switch NAME MODEL[:VERSION]          (blue-green: all traffic at once)
  tensorgate routes delete NAME
  tensorgate routes rollout NAME MODEL[:VERSION] [--stages 5,25,50,100] [--hold-secs S]
                    [--auto-promote] [--max-error-rate R] [--max-p99-ratio R]
                    [--max-p99-ms MS] [--max-disagreement R] [--max-drift PSI]
                    [--min-requests N]
  tensorgate routes pause|resume|promote|rollback NAME [--reason TEXT]
  tensorgate routes events [NAME] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

DEFAULT_URL = "127.0.0.1:8001"


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--url, --token, --tls-ca, --timeout: taken before the action and after it
    (`tensorgate routes --url X list` and `tensorgate routes list --url X`). After the
    action they default to "not given", so they never undo one given before it."""
    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--url", default=default(os.environ.get("TENSORGATE_URL", DEFAULT_URL)),
                        help=f"server gRPC address (env TENSORGATE_URL; default {DEFAULT_URL})")
    parser.add_argument("--token", default=default(os.environ.get("TENSORGATE_TOKEN")),
                        help="bearer token with the admin role (env TENSORGATE_TOKEN; "
                             "default: none)")
    parser.add_argument("--tls-ca", metavar="PEM", default=default(None),
                        help="connect over TLS, trusting this CA bundle (the server runs "
                             "with --tls-cert; default: plaintext)")
    parser.add_argument("--timeout", type=float, default=default(10.0),
                        help="seconds to wait for the server's answer (default 10)")


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "routes", help="list and change routes and rollouts on a running server",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter,
    )
    _connection_options(p, defaults=True)
    after = argparse.ArgumentParser(add_help=False)
    _connection_options(after, defaults=False)
    from tensorgate.cli import program_version

    program_version(p)
    program_version(after)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str):
        return sub.add_parser(name, help=text, description=text, parents=[after])

    action("list", "every route, with its targets, shadow and rollout")
    action("get", "one route").add_argument("name", help="the route's name")
    s = action("set", "create or replace a route: weighted targets, optional shadow")
    s.add_argument("name", help="the route's name (clients call it as a model name)")
    s.add_argument("targets", nargs="+", metavar="MODEL[:VERSION]=WEIGHT",
                   help="a target and its weight; no version: the model's default")
    s.add_argument("--sticky", action="store_true",
                   help="one route key always gets the same target (default: random)")
    s.add_argument("--normalize", action="store_true",
                   help="scale the weights to 100 instead of refusing other sums")
    s.add_argument("--shadow", metavar="MODEL[:VERSION]@FRACTION",
                   help="mirror this fraction of requests to a model (answers discarded, "
                        "compared); default: none")
    s.add_argument("--shadow-atol", type=float, default=0.0,
                   help="absolute tolerance when comparing shadow answers (default 0)")
    sw = action("switch", "blue-green: send all of a route's traffic to one target at once")
    sw.add_argument("name", help="the route's name")
    sw.add_argument("target", metavar="MODEL[:VERSION]", help="the target to switch to")
    action("delete", "remove a route").add_argument("name", help="the route's name")
    r = action("rollout", "start a canary rollout of a candidate on a route")
    r.add_argument("name", help="the route's name")
    r.add_argument("candidate", metavar="MODEL[:VERSION]", help="the version to roll out")
    r.add_argument("--stages", default="5,25,50,100",
                   help="traffic percentages, in order (default 5,25,50,100)")
    r.add_argument("--hold-secs", type=float, default=60.0,
                   help="time at each stage before the next (default 60)")
    r.add_argument("--auto-promote", action="store_true",
                   help="after the last stage, promote at once (default: wait in "
                        "AWAITING_PROMOTION, guards on, for `routes promote`); stages "
                        "advance on their own once held --hold-secs and the candidate "
                        "served --min-requests")
    r.add_argument("--max-error-rate", type=float, default=0.0,
                   help="roll back when the candidate's error rate passes this (0: off)")
    r.add_argument("--max-p99-ratio", type=float, default=0.0,
                   help="roll back when its p99 passes this multiple of the stable's (0: off)")
    r.add_argument("--max-p99-ms", type=float, default=0.0,
                   help="roll back when its p99 passes this many ms (0: off)")
    r.add_argument("--max-disagreement", type=float, default=0.0,
                   help="roll back when shadow disagreement passes this fraction (0: off)")
    r.add_argument("--max-drift", type=float, default=0.0,
                   help="roll back when the candidate's drift score (PSI against its "
                        "profile), or its outputs' PSI against the stable's, passes this; "
                        "needs drift profiles (0: off)")
    r.add_argument("--min-requests", type=int, default=0,
                   help="requests a stage needs before the guards judge it (default 0)")
    for name, text in (("pause", "hold a rollout at its stage"),
                       ("resume", "continue a paused rollout"),
                       ("promote", "end a rollout now: the candidate takes all traffic"),
                       ("rollback", "end a rollout: all traffic back to the stable target")):
        a = action(name, text)
        a.add_argument("name", help="the route's name")
        if name == "rollback":
            a.add_argument("--reason", default="", help="recorded in the route's events")
    e = action("events", "what happened to routes and rollouts, newest last")
    e.add_argument("name", nargs="?", default="", help="one route (default: all)")
    e.add_argument("--limit", type=int, default=100, help="most events to show (default 100)")


def _model_version(text: str) -> tuple[str, str]:
    model, _, version = text.partition(":")
    return model, version


def _request(args, pb):
    """(rpc name, request message) for the parsed arguments."""
    a = args.action
    if a == "list":
        return "ListRoutes", pb.ListRoutesRequest()
    if a == "get":
        return "GetRoute", pb.GetRouteRequest(name=args.name)
    if a == "delete":
        return "DeleteRoute", pb.DeleteRouteRequest(name=args.name)
    if a in ("set", "switch"):
        route = pb.Route(name=args.name, sticky=getattr(args, "sticky", False))
        if a == "switch":
            model, version = _model_version(args.target)
            route.targets.add(model=model, version=version, weight=100)
        for text in getattr(args, "targets", []):
            head, sep, weight = text.rpartition("=")
            if not sep:
                raise ValueError(f"target {text!r}: expected MODEL[:VERSION]=WEIGHT")
            model, version = _model_version(head)
            route.targets.add(model=model, version=version, weight=float(weight))
        if getattr(args, "shadow", None):
            head, sep, fraction = args.shadow.rpartition("@")
            if not sep:
                raise ValueError(f"--shadow {args.shadow!r}: expected MODEL[:VERSION]@FRACTION")
            model, version = _model_version(head)
            route.shadow.CopyFrom(pb.Shadow(model=model, version=version,
                                            fraction=float(fraction), atol=args.shadow_atol))
        return "SetRoute", pb.SetRouteRequest(route=route,
                                              normalize=getattr(args, "normalize", False))
    if a == "rollout":
        model, version = _model_version(args.candidate)
        spec = pb.RolloutSpec(
            candidate_model=model, candidate_version=version,
            stages=[float(x) for x in args.stages.split(",") if x.strip()],
            hold_secs=args.hold_secs, auto_promote=args.auto_promote,
            guards=pb.Guards(max_error_rate=args.max_error_rate,
                             max_p99_ratio=args.max_p99_ratio, max_p99_ms=args.max_p99_ms,
                             max_disagreement=args.max_disagreement,
                             max_drift=args.max_drift, min_requests=args.min_requests),
        )
        return "StartRollout", pb.StartRolloutRequest(route=args.name, spec=spec)
    if a in ("pause", "resume"):
        return "PauseRollout", pb.PauseRolloutRequest(route=args.name, resume=a == "resume")
    if a == "promote":
        return "PromoteRollout", pb.PromoteRolloutRequest(route=args.name)
    if a == "rollback":
        return "RollbackRollout", pb.RollbackRolloutRequest(route=args.name, reason=args.reason)
    if a == "events":
        return "ListEvents", pb.ListEventsRequest(route=args.name, limit=args.limit)
    raise ValueError(f"unknown action {a!r}")


def main(args) -> int:
    import grpc

    from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
    from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

    try:
        rpc, request = _request(args, pb)
    except ValueError as exc:
        print(f"tensorgate routes: {exc}", file=sys.stderr)
        return 2
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else None
    if args.tls_ca:
        try:
            with open(args.tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        except OSError as exc:
            print(f"tensorgate routes: --tls-ca: {exc}", file=sys.stderr)
            return 2
        channel = grpc.secure_channel(args.url, creds)
    else:
        channel = grpc.insecure_channel(args.url)
    with channel:
        stub = control_pb2_grpc.RoutingServiceStub(channel)
        try:
            reply = getattr(stub, rpc)(request, timeout=args.timeout, metadata=metadata)
        except grpc.RpcError as exc:
            print(f"tensorgate routes: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps(_output(reply, pb), indent=2))
    return 0


def _output(reply, pb) -> dict:
    """One shape for every action: {"routes": [...], "events": [...]}, each route and
    event with every field (defaults included), so a script reads the same keys."""
    from google.protobuf import json_format

    def as_dict(message):
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)

    routes, events = [], []
    if isinstance(reply, pb.ListRoutesResponse):
        routes = [as_dict(r) for r in reply.routes]
    elif isinstance(reply, pb.ListEventsResponse):
        events = [as_dict(e) for e in reply.events]
    elif isinstance(reply, pb.Route):  # GetRoute answers the route itself
        routes = [as_dict(reply)]
    elif hasattr(reply, "route") and reply.HasField("route"):
        routes = [as_dict(reply.route)]
    return {"routes": routes, "events": events}
