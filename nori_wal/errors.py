"""The nori-wal exception tree: only these cross the public API.

    WalError                      base of everything nori-wal raises
    ├── CorruptionError           damaged bytes where whole records must be (names segment + offset)
    ├── WalLockedError            the directory already belongs to another writer
    ├── WalClosedError            the log or client was closed
    ├── RecordTooLargeError       a record cannot fit in one segment / one message
    ├── WalIOError                a write or fsync failed (the log is fail-stopped until reopened), or a read failed
    │                             (also an OSError: ``errno`` and ``filename`` are the failed call's)
    ├── WriterUnavailableError    no writer process answered within the timeout (also a ConnectionError)
    ├── ProtocolError             a malformed request or reply on the wire
    │   └── InvalidRecordError    an argument that is not a valid Record (also a ValueError)
    ├── RecordsDeletedError       a reader's next records were deleted by GC (names the gap)
    ├── ConsumerExpiredError      a consumer's cursor was expired by max_retained_bytes (names what was lost)
    └── DedupeCapacityError       a new idempotency key would exceed its bound (WalConfig.dedupe_max_keys)

Lower-layer errors (OSError, zmq.ZMQError) are chained as ``__cause__``. Where Python has a
matching built-in the class is also one (as redis-py and httpx do it), so code written for
the built-ins keeps working: ``except OSError`` catches a failed fsync, ``except
ConnectionError`` a writer that is down, ``except ValueError`` an invalid record.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .position import Position


class WalError(Exception):
    """Base class of every error nori-wal raises."""


class CorruptionError(WalError):
    """Bytes that must hold whole, checksummed records do not."""

    def __init__(self, message: str, segment_id: int | None = None, offset: int | None = None):
        super().__init__(message)
        self.segment_id = segment_id
        self.offset = offset


class WalLockedError(WalError):
    """Another writer (embedded Wal or writer process) owns the directory."""


class WalClosedError(WalError):
    """The log, reader or client was used after close()."""


class RecordTooLargeError(WalError):
    """A record is larger than a segment (or a wire message) can hold."""


def _cause_field(exc: BaseException, name: str) -> Any:
    """``name`` of the OSError chained as ``exc``'s cause (``raise ... from oserror``), else None."""
    cause = exc.__cause__
    return getattr(cause, name) if isinstance(cause, OSError) else None


class WalIOError(WalError, OSError):
    """The OS failed an I/O call. A failed write or fsync fail-stops the log: nothing after it
    is acknowledged and every later call raises this until the log is reopened and recovered.

    Also an ``OSError``: ``errno`` (``errno.ENOSPC``, ``errno.EACCES`` ...) and ``filename``
    are those of the failed call, taken from the chained OSError unless set here; the
    message (``str(err)``) says what failed, where, and the OS's reason.
    """

    # Kept outside OSError's own fields: set there, they would turn str(err) into "[Errno 28] None: 'path'".
    _errno: int | None = None
    _filename: Any = None

    @property
    def errno(self) -> int | None:
        return self._errno if self._errno is not None else _cause_field(self, "errno")

    @errno.setter
    def errno(self, value: int | None) -> None:
        self._errno = value

    @property
    def filename(self) -> Any:
        return self._filename if self._filename is not None else _cause_field(self, "filename")

    @filename.setter
    def filename(self, value: Any) -> None:
        self._filename = value


class WriterUnavailableError(WalError, ConnectionError):
    """No writer process answered within the client's timeout (also a ``ConnectionError``)."""


class ProtocolError(WalError):
    """A request or reply on the wire was malformed or rejected as malformed."""


class InvalidRecordError(ProtocolError, ValueError):
    """An append was given something that is not a valid Record (wrong types, an unknown compression,
    a ttl out of range): refused before anything is written or sent. Also a ValueError."""


class PositionPastEndError(WalError, ValueError):
    """A destructive call named a position past the end of the log (a typo must not empty it):
    nothing was done. Also a ValueError."""


class RecordsDeletedError(WalError):
    """A reader's next records were deleted (by GC) before it read them: nothing is skipped silently.

    ``gap_start``: where the reader stood (the first record it missed was at or after it);
    ``gap_end``: where the log now resumes (None when unknown).
    """

    def __init__(self, message: str, gap_start: Position | None = None, gap_end: Position | None = None):
        super().__init__(message)
        self.gap_start = gap_start
        self.gap_end = gap_end


class ConsumerExpiredError(WalError):
    """A consumer's cursor fell so far behind that retention (``max_retained_bytes``) expired it."""


class DedupeCapacityError(WalError):
    """A new idempotency key would make the dedupe index hold more than ``WalConfig.dedupe_max_keys``
    keys appended within the window (``dedupe_max_auto_keys`` for a retrying client's automatic keys);
    the append wrote nothing. Duplicates are still answered."""
