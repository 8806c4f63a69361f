"""``tensorgate.v1.RoutingService``: the control plane for routes and rollouts.

Served beside the inference service on the same port. Every RPC needs the admin role
when auth is on; every change leaves one audit line with its outcome (reads don't).
The role check, audit and error mapping are the inference service's ``admin_handler``.
"""

from __future__ import annotations

import grpc

from tensorgate._proto.tensorgate.v1 import control_pb2 as pb
from tensorgate.grpc.inference import admin_handler, lenient
from tensorgate.routing.manager import RouteManager
from tensorgate.security import Guard

SERVICE = "tensorgate.v1.RoutingService"


class RoutingService:
    def __init__(self, manager: RouteManager) -> None:
        self.m = manager

    async def list_routes(self, request, context):
        return pb.ListRoutesResponse(routes=self.m.list_routes())

    async def get_route(self, request, context):
        return self.m.get_route(request.name)

    async def set_route(self, request, context):
        route, notes = self.m.set_route(request.route, request.normalize)
        return pb.RouteResponse(route=route, notes=notes)

    async def delete_route(self, request, context):
        self.m.delete_route(request.name)
        return pb.DeleteRouteResponse()

    async def start_rollout(self, request, context):
        return pb.RouteResponse(route=self.m.start_rollout(request.route, request.spec))

    async def pause_rollout(self, request, context):
        return pb.RouteResponse(route=self.m.pause_rollout(request.route, request.resume))

    async def promote_rollout(self, request, context):
        return pb.RouteResponse(route=self.m.promote_rollout(request.route))

    async def rollback_rollout(self, request, context):
        return pb.RouteResponse(route=self.m.rollback_rollout(request.route, request.reason))

    async def list_events(self, request, context):
        return pb.ListEventsResponse(events=self.m.list_events(request.route, request.limit))


# Reads need the admin role too, but leave no audit line.
_READ_ONLY = frozenset(("ListRoutes", "GetRoute", "ListEvents"))


def _subject(request) -> str:
    for field in ("name", "route"):
        value = getattr(request, field, None)
        if isinstance(value, str):
            return value
    if hasattr(request, "route") and hasattr(request.route, "name"):
        return request.route.name
    return "-"


def generic_handler(service: RoutingService, guard: Guard | None) -> grpc.GenericRpcHandler:
    s = service
    table = {
        "ListRoutes": (s.list_routes, pb.ListRoutesRequest),
        "GetRoute": (s.get_route, pb.GetRouteRequest),
        "SetRoute": (s.set_route, pb.SetRouteRequest),
        "DeleteRoute": (s.delete_route, pb.DeleteRouteRequest),
        "StartRollout": (s.start_rollout, pb.StartRolloutRequest),
        "PauseRollout": (s.pause_rollout, pb.PauseRolloutRequest),
        "PromoteRollout": (s.promote_rollout, pb.PromoteRolloutRequest),
        "RollbackRollout": (s.rollback_rollout, pb.RollbackRolloutRequest),
        "ListEvents": (s.list_events, pb.ListEventsRequest),
    }
    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(
            admin_handler(
                rpc, fn, guard, _subject, audited=rpc not in _READ_ONLY
            ),
            request_deserializer=lenient(req),
            response_serializer=lambda m: m.SerializeToString(),
        )
        for rpc, (fn, req) in table.items()
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)
