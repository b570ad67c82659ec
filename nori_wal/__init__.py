"""nori-wal: a durable, multi-process write-ahead log for Python.

The public names of the API contract (the project brief's API.md); README.md states the guarantees.
``WalClient``, ``AsyncWalClient`` (``nori_wal.client``) and ``WalHandler`` (``nori_wal.log_handler``)
are imported on first use: they need ZeroMQ, which an embedded-only user need not load.
"""

from typing import TYPE_CHECKING, Any

from .config import FsyncPolicy, WalConfig
from .consumer import Consumer, ConsumerInfo, drop_consumer, list_consumers, open_consumer
from .dedupe import AppendResult
from .errors import (
    ConsumerExpiredError,
    CorruptionError,
    DedupeCapacityError,
    InvalidRecordError,
    PositionPastEndError,
    ProtocolError,
    RecordsDeletedError,
    RecordTooLargeError,
    WalClosedError,
    WalError,
    WalIOError,
    WalLockedError,
    WriterUnavailableError,
)
from .position import Position
from .reader import WalReader, open_reader
from .record import Compression, Record
from .recovery import RecoveryInfo
from .wal import Wal

if TYPE_CHECKING:
    from .client import AsyncWalClient, WalClient
    from .log_handler import WalHandler

_LAZY = {"WalClient": "client", "AsyncWalClient": "client", "WalHandler": "log_handler"}


def __getattr__(name: str) -> Any:
    """``nori_wal.WalClient`` and the other names of _LAZY, imported when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AppendResult",
    "AsyncWalClient",
    "Compression",
    "Consumer",
    "ConsumerExpiredError",
    "ConsumerInfo",
    "CorruptionError",
    "DedupeCapacityError",
    "FsyncPolicy",
    "InvalidRecordError",
    "PositionPastEndError",
    "Position",
    "ProtocolError",
    "Record",
    "RecordTooLargeError",
    "RecordsDeletedError",
    "RecoveryInfo",
    "Wal",
    "WalClient",
    "WalClosedError",
    "WalConfig",
    "WalError",
    "WalHandler",
    "WalIOError",
    "WalLockedError",
    "WalReader",
    "WriterUnavailableError",
    "drop_consumer",
    "list_consumers",
    "open_consumer",
    "open_reader",
]
__version__ = "0.1.0"
