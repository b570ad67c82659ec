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
    FLAG_IDEMPOTENCY,
    FLAG_SEAL,
    FLAG_TTL,
    FORMAT_MAX_FRAME,
    MIN_FRAME_SIZE,
    NEED_MORE,
    RESERVED_FLAGS,
    ZEROED,
    Seal,
    decode_record,
    frame_layout,
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
# Flags the inlined fast path accepts: no TTL, no seal, no reserved bit, a valid compression,
# no idempotency key (frame_layout checks its block).
_FAST_FLAGS = bytes(
    1
    if not f & (RESERVED_FLAGS | FLAG_TTL | FLAG_SEAL | FLAG_IDEMPOTENCY) and (f & COMPRESSION_MASK) != COMPRESSION_MASK
    else 0
    for f in range(256)
)


# Flags of a plain record: the fast path's, and no compression (a compressed value needs a decode check).
_PLAIN_FLAGS = bytes(ok if not f & COMPRESSION_MASK else 0 for f, ok in enumerate(_FAST_FLAGS))


def one_plain_frame(buf: BytesLike, limit: int) -> bool:
    """True if ``buf`` is exactly one valid record frame of at most ``limit`` bytes, uncompressed, no TTL.

    The writer's check for a synchronous producer's one-record append: what
    ``scan_frames`` accepts as one record ending at ``len(buf)``, in a tenth of
    its steps (a key under 128 bytes, a value under 16 KiB). False means "use
    ``scan_frames``", not "invalid".
    """
    n = len(buf)
    if n < MIN_FRAME_SIZE or n > limit:
        return False
    klen = buf[4]
    vlen = buf[5]
    fp = 6
    if vlen >= 0x80:
        v1 = buf[6]
        if v1 >= 0x80:
            return False
        vlen = (vlen & 0x7F) | (v1 << 7)
        fp = 7
    return (
        klen < 0x80
        and fp + 1 + klen + vlen == n
        and _PLAIN_FLAGS[buf[fp]] == 1
        and crc32c(buf[4:]) == _U32.unpack_from(buf)[0]
    )


def scan_frames(buf: BytesLike, start: int = 0, limit: int = FORMAT_MAX_FRAME) -> ScanResult:
    """Walk the frames of ``buf`` from ``start``; never raises for damaged input.

    The common frame (1-byte key length, value length under 2 MiB, no TTL) takes
    an inlined fast path; everything else goes through ``codec.frame_end``.
    """
    mv = buf if type(buf) is memoryview else memoryview(buf)
    n = len(buf)
    off, count, compressed = start, 0, 0
    unpack = _U32.unpack_from
    fast_flags = _FAST_FLAGS
    while off < n:
        p = off + 4
        end = -1
        if p + 4 <= n:
            klen = buf[p]
            vb0 = buf[p + 1]
            fp = -1
            if klen < 0x80:
                if vb0 < 0x80:
                    vlen, fp = vb0, p + 2
                else:
                    vb1 = buf[p + 2]
                    if vb1 < 0x80:
                        vlen, fp = (vb0 & 0x7F) | (vb1 << 7), p + 3
                    elif p + 4 < n and buf[p + 3] < 0x80:
                        vlen, fp = (vb0 & 0x7F) | ((vb1 & 0x7F) << 7) | (buf[p + 3] << 14), p + 4
            if fp > 0 and fp < n:
                flags = buf[fp]
                e = fp + 1 + klen + vlen
                if fast_flags[flags] and e <= n and e - off <= limit and crc32c(mv[p:e]) == unpack(buf, off)[0]:
                    end = e
                    if flags & COMPRESSION_MASK:
                        compressed += 1
        if end < 0:
            lay = frame_layout(buf, off, n, limit)
            if type(lay) is int:
                return _stopped(buf, off, count, lay, limit)
            flags, end = lay[0], lay[4]  # type: ignore[index]
            if crc32c(mv[p:end]) != unpack(buf, off)[0]:
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
