"""``tensorgate routes ...``: the control plane from the command line.

Talks to a running server's tensorgate.v1.RoutingService and prints JSON (the protobuf
JSON mapping), so scripts can parse what it says. Errors print the server's message and
exit 1.

  tensorgate routes list
  tensorgate routes get NAME
  tensorgate routes set NAME MODEL[:VERSION]=WEIGHT ... [--sticky] [--normalize]
                    [--shadow MODEL[:VERSION]@FRACTION] [--shadow-atol X]
  tensorgate routes switch NAME MODEL[:VERSION]          (blue-green: all traffic at once)
  tensorgate routes delete NAME
  tensorgate routes rollout NAME MODEL[:VERSION] [--stages 5,25,50,100] [--hold-secs S]
                    [--auto-promote] [--max-error-rate R] [--max-p99-ratio R]
                    [--max-p99-ms MS] [--max-disagreement R] [--min-requests N]
  tensorgate routes pause|resume|promote|rollback NAME [--reason TEXT]
  tensorgate routes events [NAME] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_URL = "127.0.0.1:8001"


def add_parser(verbs) -> None:
    p = verbs.add_parser(
        "routes", help="list and change routes and rollouts on a running server",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--url", default=os.environ.get("TENSORGATE_URL", DEFAULT_URL),
                   help="server gRPC address (env TENSORGATE_URL)")
    p.add_argument("--token", default=os.environ.get("TENSORGATE_TOKEN"),
                   help="bearer token with the admin role (env TENSORGATE_TOKEN)")
    p.add_argument("--tls-ca", metavar="PEM",
                   help="connect over TLS, trusting this CA bundle (server on --tls-cert)")
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("list")
    sub.add_parser("get").add_argument("name")
    s = sub.add_parser("set")
    s.add_argument("name")
    s.add_argument("targets", nargs="+", metavar="MODEL[:VERSION]=WEIGHT")
    s.add_argument("--sticky", action="store_true")
    s.add_argument("--normalize", action="store_true")
    s.add_argument("--shadow", metavar="MODEL[:VERSION]@FRACTION")
    s.add_argument("--shadow-atol", type=float, default=0.0)
    sw = sub.add_parser("switch")
    sw.add_argument("name")
    sw.add_argument("target", metavar="MODEL[:VERSION]")
    sub.add_parser("delete").add_argument("name")
    r = sub.add_parser("rollout")
    r.add_argument("name")
    r.add_argument("candidate", metavar="MODEL[:VERSION]")
    r.add_argument("--stages", default="5,25,50,100")
    r.add_argument("--hold-secs", type=float, default=60.0)
    r.add_argument("--auto-promote", action="store_true")
    r.add_argument("--max-error-rate", type=float, default=0.0)
    r.add_argument("--max-p99-ratio", type=float, default=0.0)
    r.add_argument("--max-p99-ms", type=float, default=0.0)
    r.add_argument("--max-disagreement", type=float, default=0.0)
    r.add_argument("--min-requests", type=int, default=0)
    for action in ("pause", "resume", "promote", "rollback"):
        a = sub.add_parser(action)
        a.add_argument("name")
        if action == "rollback":
            a.add_argument("--reason", default="")
    e = sub.add_parser("events")
    e.add_argument("name", nargs="?", default="")
    e.add_argument("--limit", type=int, default=100)


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
                             min_requests=args.min_requests),
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
    from google.protobuf import json_format

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
    print(json_format.MessageToJson(reply, indent=2))
    return 0
