"""Python client for TensorGate (and any KServe v2 / Triton gRPC server).

    from tensorgate_client import Client
    with Client("127.0.0.1:8001", timeout=5.0) as client:
        out = client.infer("simple_mlp", {"INPUT0": np.zeros((1, 16), np.float32)})
        out["OUTPUT0"]   # numpy array, shape (1, 8)

``AsyncClient`` is the asyncio twin. Every failed call raises ``TensorGateError``
(``.code``: ``grpc.StatusCode``, ``.message``: the server's message).
"""

from tensorgate_client.aio import AsyncClient
from tensorgate_client.client import Client
from tensorgate_client.config import TLS, ConnectRetry
from tensorgate_client.errors import TensorGateError
from tensorgate_client.messages import ROUTE_KEY_HEADER, ROUTE_KEY_PARAMETER, StreamResult

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectRetry",
    "ROUTE_KEY_HEADER",
    "ROUTE_KEY_PARAMETER",
    "StreamResult",
    "TLS",
    "TensorGateError",
]
__version__ = "0.1.0"
