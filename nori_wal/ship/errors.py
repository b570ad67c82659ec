"""Why shipping stopped: each a ``WalError`` and the matching built-in, with a message that says what to do.

ShipError                      base (a WalError)
├── ClusterUnreachableError    no NATS server answered for longer than the give-up time (ConnectionError)
├── StreamNotFoundError        the stream does not exist and --create-stream was not given (LookupError)
├── ShipAuthorizationError     the cluster refused the credentials (PermissionError)
├── StreamConfigError          duplicate window too short, subject not in the stream (ValueError)
└── NatsNotInstalledError      nats-py is missing (ImportError): pip install 'nori-wal[nats]'
"""

from __future__ import annotations

from ..errors import WalError

INSTALL_HINT = "nats-py is not installed: pip install 'nori-wal[nats]'"


class ShipError(WalError):
    """Shipping cannot go on."""


class ClusterUnreachableError(ShipError, ConnectionError):
    """No server of the cluster could be reached (after retrying with backoff)."""


class StreamNotFoundError(ShipError, LookupError):
    """The stream named does not exist."""


class ShipAuthorizationError(ShipError, PermissionError):
    """The cluster refused the connection's credentials or a permission."""


class StreamConfigError(ShipError, ValueError):
    """The stream exists but cannot give exactly-once delivery for this shipper."""


class NatsNotInstalledError(ShipError, ImportError):
    """The optional dependency nats-py is missing."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)
