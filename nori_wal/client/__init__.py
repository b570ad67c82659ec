"""Producers: send records to the writer process serving a directory.

    from nori_wal.client import WalClient, AsyncWalClient
    client = WalClient.for_dir("wal")            # or WalClient(endpoint, timeout=10.0)
    pos = client.append(Record.put(b"k", b"v"))  # returns once durable per the writer's policy

``session`` is the pure request bookkeeping (ids, in-flight limit, coalescing,
batches, replies); ``base`` the core both clients share (connections per
process, fork, finding the writer, pickling); ``transport`` the ZeroMQ
boundary; ``sync`` and ``aio`` the two shells (blocking and asyncio).
"""

from .aio import AsyncWalClient
from .sync import PendingAppend, WalClient

__all__ = ["AsyncWalClient", "PendingAppend", "WalClient"]
