"""The recovery scan: how far a segment's bytes hold whole, valid records (pure).

Rules:
1. The scan walks frames from ``start`` and stops at the first thing that is
   not a whole valid record; it reports why (``Stop``) and where the valid
   prefix ends. What that means (a legal torn tail, or corruption) is the
   caller's decision: legal only at the end of the last segment.
2. Every frame's CRC is checked; lengths are checked before slicing.
3. A seal frame ends the segment's records.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from crc32c import crc32c

from .codec import (
    COMPRESSION_MASK,
    CORRUPT,
    FLAG_SEAL,
    FORMAT_MAX_FRAME,
    MIN_FRAME_SIZE,
    NEED_MORE,
    PLAIN_FLAGS,
    SCAN_FLAGS,
    ZEROED,
    Seal,
    decode_record,
    fast_frame,
    frame_end,
    frame_layout,
    parse_header,
)
from .record import BytesLike


class Stop(enum.Enum):
    """Why a scan stopped."""

    END = "end"  # the bytes ended exactly after a whole record
    TORN = "torn"  # the bytes end inside a frame
    ZEROED = "zeroed"  # zero bytes where a frame should start
    CORRUPT = "corrupt"  # an invalid frame (checksum, flags or lengths)
    SEALED = "sealed"  # a seal frame: the segment is complete


class ScanResult(NamedTuple):
    """Where a scan stopped and why (a NamedTuple: the writer builds one per request it validates)."""

    valid_end: int  # offset just past the last whole record (or past the seal)
    records: int  # whole records from start to valid_end (the seal not counted)
    stop: Stop
    seal: Seal | None = None
    reason: str = ""
    compressed: int = 0  # of those records, how many have a compressed value (not checked here)


_U32 = struct.Struct("<I")


def one_plain_frame(buf: BytesLike, limit: int) -> bool:
    """True if ``buf`` is exactly one valid record frame of at most ``limit`` bytes, uncompressed, no TTL.

    The writer's check for a synchronous producer's one-record append: what
    ``scan_frames`` accepts as one record ending at ``len(buf)`` (codec's fast
    path). False means "use ``scan_frames``", not "invalid".
    """
    n = len(buf)
    if n < MIN_FRAME_SIZE or n > limit or (buf[5] >= 0x80 and buf[6] >= 0x80):  # a value under 16 KiB
        return False
    lay = fast_frame(buf, 0, n, limit, PLAIN_FLAGS)
    return lay is not None and lay[1] == n


def scan_frames(buf: BytesLike, start: int = 0, limit: int = FORMAT_MAX_FRAME) -> ScanResult:
    """Walk the frames of ``buf`` from ``start``; never raises for damaged input.

    The common frame takes codec's ``fast_frame``; everything else goes through
    ``codec.frame_layout`` and ``decode_record``.
    """
    mv = buf if type(buf) is memoryview else memoryview(buf)
    n = len(buf)
    off, count, compressed = start, 0, 0
    unpack = _U32.unpack_from
    while off < n:
        lay = fast_frame(buf, off, n, limit, SCAN_FLAGS)
        if lay is not None:
            end = lay[1]
            if buf[lay[0] - buf[off + 4] - 1] & COMPRESSION_MASK:  # the flags byte before the key
                compressed += 1
        else:
            full = frame_layout(buf, off, n, limit)
            if type(full) is int:
                return _stopped(buf, off, count, full, limit)
            flags, end = full[0], full[4]  # type: ignore[index]
            if crc32c(mv[off + 4 : end]) != unpack(buf, off)[0]:
                status = ZEROED if not any(buf[off : off + MIN_FRAME_SIZE]) else CORRUPT
                return _stopped(buf, off, count, status, limit)
            if flags & FLAG_SEAL:
                return _stopped(buf, off, count, 0, limit)
            if flags & COMPRESSION_MASK:
                compressed += 1
        count += 1
        off = end
    return ScanResult(off, count, Stop.END, compressed=compressed)


def _stopped(buf: BytesLike, off: int, count: int, status: int, limit: int) -> ScanResult:
    """Classify why the scan stopped at ``off``."""
    if status == NEED_MORE:
        return ScanResult(off, count, Stop.TORN, reason="record cut off by the end of the data")
    if status == ZEROED:
        return ScanResult(off, count, Stop.ZEROED, reason="zero-filled bytes")
    if status == CORRUPT:
        res = decode_record(buf, off, limit=limit)
        reason = getattr(res, "reason", "invalid frame")
        return ScanResult(off, count, Stop.CORRUPT, reason=reason)
    # A valid frame that is a seal (or a record whose value fails to decompress).
    res = decode_record(buf, off, limit=limit)
    if isinstance(res, Seal):
        return ScanResult(res.end, count, Stop.SEALED, seal=res)
    return ScanResult(off, count, Stop.CORRUPT, reason=getattr(res, "reason", "invalid frame"))
