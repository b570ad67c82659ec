"""Shipping the log to a NATS JetStream cluster, exactly once, in log order (docs/SHIPPING.md).

Pure parts: ``inflight`` (the publish window and commit clock), ``mapping``
(record <-> message). Shells: ``identity`` (the durable log id), ``feed`` (the
cursor read in a thread), ``stream`` (JetStream checks), ``shipper`` (the
loop), ``metrics``; ``cluster`` starts a private local cluster for tests and
benchmarks. nats-py is needed only by the shells (``pip install 'nori-wal[nats]'``).
"""

from .errors import (
    ClusterUnreachableError,
    NatsNotInstalledError,
    ShipAuthorizationError,
    ShipError,
    StreamConfigError,
    StreamNotFoundError,
)
from .identity import ensure_identity, read_identity
from .mapping import from_message, message_id, to_message
from .shipper import ShipOptions, Shipper, ShipStats, ship

__all__ = [
    "ClusterUnreachableError",
    "NatsNotInstalledError",
    "ShipAuthorizationError",
    "ShipError",
    "ShipOptions",
    "ShipStats",
    "Shipper",
    "StreamConfigError",
    "StreamNotFoundError",
    "ensure_identity",
    "from_message",
    "message_id",
    "read_identity",
    "ship",
    "to_message",
]
