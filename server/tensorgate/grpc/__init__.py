"""gRPC servicers: the v2 inference service, health and reflection."""
