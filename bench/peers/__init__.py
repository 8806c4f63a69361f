"""Servers the benchmarks compare, each behind the PeerServer interface (base.py).

    from bench.peers import PEERS
    with PEERS["echo"]() as server:
        address = server.start(repo, "tiny_mlp")
"""

from __future__ import annotations

from bench.peers.base import PeerServer, PeerStartError
from bench.peers.echo import EchoServer
from bench.peers.kserve import KServePeer
from bench.peers.mlserver import MLServerPeer
from bench.peers.pytriton import PyTritonPeer
from bench.peers.tensorgate import TensorGatePeer

#: name -> class, in the order comparisons list them.
PEERS: dict[str, type[PeerServer]] = {
    cls.name: cls for cls in (TensorGatePeer, EchoServer, MLServerPeer, PyTritonPeer, KServePeer)
}

__all__ = ["PEERS", "PeerServer", "PeerStartError", "EchoServer", "KServePeer",
           "MLServerPeer", "PyTritonPeer", "TensorGatePeer"]
