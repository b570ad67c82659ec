"""Record and Compression: the values users append and read back (pure).

A Record is an immutable tuple, cheap to build and compare. ``value`` is bytes
on the write side; on the read side it may be a read-only memoryview into the
reader's buffer for large values (zero copy), so ``bytes(record.value)`` is the
portable way to get bytes. Equality compares contents either way.

Make records with ``Record.put``, ``Record.put_with_ttl`` and ``Record.delete``:
they check their arguments (TypeError/ValueError naming the field). ``Record(...)``
itself is the plain tuple constructor, unchecked because the log builds every
record it reads with it; an invalid one is refused when appended
(``InvalidRecordError``, a ValueError) and nothing is written.
"""

from __future__ import annotations

import enum
import math
from datetime import timedelta
from typing import NamedTuple, Union

BytesLike = Union[bytes, bytearray, memoryview]

_MS = timedelta(milliseconds=1)
MAX_IDEMPOTENCY_KEY = 128  # bytes; the frame stores the length in one byte (docs/FORMAT.md)


class Compression(enum.IntEnum):
    """How a record's value is stored on disk; keys are never compressed."""

    NONE = 0
    LZ4 = 1
    ZSTD = 2


def _as_bytes(data: BytesLike, field: str) -> bytes:
    """``data`` as bytes; any bytes-like object (buffer protocol) is accepted, nothing else.

    ``bytes(5)`` would silently be five zero bytes, and ``bytes("k")`` a confusing
    error: both are refused with a TypeError naming the field.
    """
    if type(data) is bytes:
        return data
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"Record {field} must be bytes, bytearray or memoryview (a bytes-like object), got {type(data).__name__}"
        ) from None
    return view.tobytes()


def ttl_to_ms(ttl: timedelta) -> int:
    """A TTL as whole milliseconds (the precision kept on disk)."""
    ms = ttl // _MS
    if ms < 0:
        raise ValueError(f"ttl must not be negative, got {ttl!r}")
    return ms


def _ttl_from(ttl: timedelta | int | float) -> timedelta:
    """``ttl`` (a timedelta, or a number of seconds as redis-py's ``ex=`` takes) at millisecond precision."""
    if not isinstance(ttl, timedelta):
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise TypeError(f"Record ttl must be a datetime.timedelta or a number of seconds, got {type(ttl).__name__}")
        if not (math.isfinite(ttl) and ttl >= 0):
            raise ValueError(f"Record ttl must be a finite, non-negative number of seconds, got {ttl!r}")
        try:
            ttl = timedelta(seconds=ttl)
        except OverflowError:
            raise ValueError(f"Record ttl of {ttl!r} seconds is longer than a timedelta can hold") from None
    if ttl < timedelta(0):
        raise ValueError(f"Record ttl must not be negative, got {ttl!r}")
    return timedelta(milliseconds=ttl // _MS)


def _compression_from(compression: Compression | int) -> Compression:
    try:
        return Compression(compression)
    except ValueError:
        names = ", ".join(f"Compression.{c.name}" for c in Compression)
        raise ValueError(f"Record compression must be one of {names}, got {compression!r}") from None


class Record(NamedTuple):
    """One log entry: a put, a put with TTL or a tombstone (delete).

    ``idempotency_key`` (set with ``with_idempotency_key``) makes appends of the
    record exactly-once within the log's dedupe window; it is stored in the
    frame and read back as written, and equality includes it.
    """

    key: bytes
    value: BytesLike = b""
    tombstone: bool = False
    ttl: timedelta | None = None
    compression: Compression = Compression.NONE
    idempotency_key: bytes | None = None

    @classmethod
    def put(cls, key: BytesLike, value: BytesLike) -> "Record":
        """A key/value put."""
        return cls(_as_bytes(key, "key"), _as_bytes(value, "value"), False, None, Compression.NONE)

    @classmethod
    def put_with_ttl(cls, key: BytesLike, value: BytesLike, ttl: timedelta | float) -> "Record":
        """A put that expires ``ttl`` after it was written: a timedelta or a number of seconds
        (``5``, ``0.25``), kept to the millisecond (rounded down); never negative."""
        return cls(_as_bytes(key, "key"), _as_bytes(value, "value"), False, _ttl_from(ttl), Compression.NONE)

    @classmethod
    def delete(cls, key: BytesLike) -> "Record":
        """A tombstone: the key was deleted; value is empty."""
        return cls(_as_bytes(key, "key"), b"", True, None, Compression.NONE)

    def with_compression(self, compression: Compression) -> "Record":
        """The same record, its value stored compressed with ``compression``."""
        return self._replace(compression=_compression_from(compression))

    def with_idempotency_key(self, key: BytesLike) -> "Record":
        """The same record carrying ``key`` (1..128 bytes) as its identity for exactly-once appends.

        An append whose key the log already holds within its dedupe window
        returns the original Position and writes nothing (see docs/FORMAT.md
        and README "Retries and exactly-once").
        """
        return self._replace(idempotency_key=check_idempotency_key(key))


def check_idempotency_key(key: object) -> bytes:
    """``key`` as bytes if it is a valid idempotency key (1..128 bytes), else TypeError/ValueError."""
    data = _as_bytes(key, "idempotency_key")  # type: ignore[arg-type]
    if not 1 <= len(data) <= MAX_IDEMPOTENCY_KEY:
        raise ValueError(f"Record idempotency_key must be 1..{MAX_IDEMPOTENCY_KEY} bytes, got {len(data)} bytes")
    return data
