"""``tensorgate optimize --rollout``: put a freshly written version on trial on a running
server, through its control plane, with an output-agreement guard.

1. RepositoryModelLoad of the model (or, where the server refuses explicit loads, wait
   for its repository polling), until the original and the new version are both ready;
2. the route (created pinned to the original when it does not exist) shadows the new
   version: a share of its requests is mirrored and the answers compared with the same
   tolerance as the offline check (agreement: within atol and the same top-1);
3. ``canary`` then starts a rollout to the new version whose ``max_disagreement`` guard
   rolls it back as soon as the shadow comparisons disagree too often; ``shadow``
   stops at step 2 (the version answers nobody, its agreement is on /metrics).
"""

from __future__ import annotations

import time


class RolloutError(Exception):
    """The server refused a step (the message names it, with the server's words)."""


def _channel(url: str, tls_ca: str | None):
    import grpc

    if tls_ca:
        with open(tls_ca, "rb") as f:
            return grpc.secure_channel(url, grpc.ssl_channel_credentials(root_certificates=f.read()))
    return grpc.insecure_channel(url)


def start(url: str, token: str | None, tls_ca: str | None, timeout: float, model: str,
          original: int, new: int, route: str, mode: str, shadow_fraction: float,
          atol: float, max_disagreement: float, stages: list[float], hold_secs: float,
          min_requests: int, auto_promote: bool, wait_secs: float) -> dict:
    """Run the steps above; the route as the protobuf JSON mapping (every field)."""
    import grpc
    from google.protobuf import json_format

    from tensorgate._proto.inference import grpc_service_pb2 as ipb
    from tensorgate._proto.inference import grpc_service_pb2_grpc as igrpc
    from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
    from tensorgate._proto.tensorgate.v1 import control_pb2_grpc

    metadata = [("authorization", f"Bearer {token}")] if token else None

    def call(fn, request, what: str):
        try:
            return fn(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            raise RolloutError(f"{what}: {exc.code().name}: {exc.details()}") from None

    with _channel(url, tls_ca) as channel:
        infer = igrpc.GRPCInferenceServiceStub(channel)
        routing = control_pb2_grpc.RoutingServiceStub(channel)
        try:
            infer.RepositoryModelLoad(ipb.RepositoryModelLoadRequest(model_name=model),
                                      timeout=max(timeout, wait_secs), metadata=metadata)
        except grpc.RpcError as exc:
            # FAILED_PRECONDITION: the server polls its repository instead; wait for it.
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise RolloutError(
                    f"RepositoryModelLoad {model}: {exc.code().name}: {exc.details()}"
                ) from None
        deadline = time.monotonic() + wait_secs
        for version in (new, original):
            while True:
                try:
                    ready = infer.ModelReady(
                        ipb.ModelReadyRequest(name=model, version=str(version)),
                        timeout=timeout, metadata=metadata).ready
                except grpc.RpcError:
                    ready = False
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise RolloutError(
                        f"{model}:{version} is not ready on the server after {wait_secs:g} s "
                        "(RepositoryIndex says why; the model's version_policy must serve "
                        f"both {original} and {new}, e.g. version_policy: {{ all {{ }} }})"
                    )
                time.sleep(0.2)
        try:
            spec = routing.GetRoute(pb.GetRouteRequest(name=route), timeout=timeout,
                                    metadata=metadata)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise RolloutError(f"GetRoute {route}: {exc.code().name}: {exc.details()}") from None
            spec = pb.Route(name=route)
            spec.targets.add(model=model, version=str(original), weight=100.0)
        spec.shadow.CopyFrom(pb.Shadow(model=model, version=str(new), fraction=shadow_fraction,
                                       atol=atol))
        spec.ClearField("rollout")
        spec.ClearField("key_ranges")
        reply = call(routing.SetRoute, pb.SetRouteRequest(route=spec), f"SetRoute {route}")
        result = reply.route
        if mode == "canary":
            rollout = pb.RolloutSpec(
                candidate_model=model, candidate_version=str(new), stages=stages,
                hold_secs=hold_secs, auto_promote=auto_promote,
                guards=pb.Guards(max_disagreement=max_disagreement, min_requests=min_requests),
            )
            reply = call(routing.StartRollout, pb.StartRolloutRequest(route=route, spec=rollout),
                         f"StartRollout {route}")
            result = reply.route
    return json_format.MessageToDict(result, always_print_fields_with_no_presence=True)
