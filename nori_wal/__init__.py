"""nori-wal: a durable, multi-process write-ahead log for Python.

The public names of the API contract (the project brief's API.md); README.md states the guarantees.
"""

from .config import FsyncPolicy, WalConfig
from .consumer import Consumer, ConsumerInfo, drop_consumer, list_consumers, open_consumer
from .dedupe import AppendResult
from .errors import (
    ConsumerExpiredError,
    CorruptionError,
    DedupeCapacityError,
    InvalidRecordError,
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

__all__ = [
    "AppendResult",
    "Compression",
    "Consumer",
    "ConsumerExpiredError",
    "ConsumerInfo",
    "CorruptionError",
    "DedupeCapacityError",
    "FsyncPolicy",
    "InvalidRecordError",
    "Position",
    "ProtocolError",
    "Record",
    "RecordTooLargeError",
    "RecordsDeletedError",
    "RecoveryInfo",
    "Wal",
    "WalClosedError",
    "WalConfig",
    "WalError",
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
