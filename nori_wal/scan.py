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
from dataclasses import dataclass
from typing import Callable, NamedTuple

from crc32c import crc32c

from .codec import (
    COMPRESSION_MASK,
    CORRUPT,
    FLAG_IDEMPOTENCY,
    FLAG_SEAL,
    FORMAT_MAX_FRAME,
    KEYED_FLAGS,
    MIN_FRAME_SIZE,
    NEED_MORE,
    PLAIN_FLAGS,
    SCAN_FLAGS,
    ZEROED,
    Seal,
    decode_record,
    fast_frame,
    fast_run,
    frame_end,
    frame_layout,
    idempotency_key_of,
    parse_header,
)
from .durable_mark import records_lost_below_mark
from .position import Position
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
    keyed: int = 0  # of those records, how many carry an idempotency key (counted when ``keys`` is given)


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


def one_keyed_frame(buf: BytesLike, limit: int) -> bytes | None:
    """The idempotency key of ``buf`` if it is exactly one valid keyed record frame of at most ``limit``
    bytes, uncompressed, no TTL (``one_plain_frame`` for a retrying producer's one-record append).

    None means "use ``scan_frames``", not "invalid".
    """
    n = len(buf)
    if n < MIN_FRAME_SIZE or n > limit:
        return None
    lay = fast_frame(buf, 0, n, limit, KEYED_FLAGS)
    if lay is None or lay[1] != n:
        return None
    vs = lay[0]
    return bytes(buf[vs + 1 : vs + 1 + buf[vs]])


def scan_frames(
    buf: BytesLike, start: int = 0, limit: int = FORMAT_MAX_FRAME, keys: list[int | bytes] | None = None
) -> ScanResult:
    """Walk the frames of ``buf`` from ``start``; never raises for damaged input.

    Runs of common frames take codec's ``fast_run``; everything else goes through
    ``codec.frame_layout`` and ``decode_record``. With ``keys``, each keyed
    record's offset and idempotency key are added to it (``ScanResult.keyed``
    counts them), found in the same walk.
    """
    mv = buf if type(buf) is memoryview else memoryview(buf)
    n = len(buf)
    off, count, compressed = start, 0, 0
    unpack = _U32.unpack_from
    while off < n:
        end, frames, fast_compressed = fast_run(buf, off, n, limit, SCAN_FLAGS, keys)
        if frames:
            count, compressed, off = count + frames, compressed + fast_compressed, end
            continue
        full = frame_layout(buf, off, n, limit)
        if type(full) is int:
            status = full
            break
        flags, end = full[0], full[4]  # type: ignore[index]
        if crc32c(mv[off + 4 : end]) != unpack(buf, off)[0]:
            status = ZEROED if not any(buf[off : off + MIN_FRAME_SIZE]) else CORRUPT
            break
        if flags & FLAG_SEAL:
            status = 0
            break
        if flags & COMPRESSION_MASK:
            compressed += 1
        if flags & FLAG_IDEMPOTENCY and keys is not None:
            keys += (off, idempotency_key_of(buf, full))  # type: ignore[arg-type]
        count += 1
        off = end
    else:
        return ScanResult(off, count, Stop.END, compressed=compressed, keyed=_found(keys))
    return _stopped(buf, off, count, status, limit)._replace(compressed=compressed, keyed=_found(keys))


def _found(keys: list[int | bytes] | None) -> int:
    return 0 if keys is None else len(keys) // 2


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


# -- what damage is: the one decision (recovery, verify/stats and readers ask it) -----------------

ReadAt = Callable[[int, int], bytes]
"""read(offset, size): up to ``size`` bytes of the segment file from ``offset`` (fewer at its end)."""

RESYNC_WINDOW = 64 * 1024  # how far past a bad frame the classifier looks for a whole record
ZERO_RUN = MIN_FRAME_SIZE  # zeros this long are a hole a torn write left (never a valid frame's start)
_PROBE = 1 << 20  # bytes read per step when looking for zeros or data


class Damage(enum.Enum):
    """What the bytes from where a segment's whole records end are (see ``classify_tail``)."""

    NONE = "none"  # whole records to the end of the file (or a seal ending it)
    TORN = "torn"  # a crash's tail: a record cut short (by the end of the file, over zeros, or into pieces)
    ZEROED = "zeroed"  # a crash's tail: zeros where a frame starts (maybe followed by a torn write's later pages)
    GARBAGE = "garbage"  # bad bytes running to the end of the last segment that no crash leaves
    CORRUPT = "corrupt"  # bad bytes with whole records after them, in a segment with a successor, or under a seal


@dataclass(frozen=True)
class Verdict:
    """The decision about the bytes at ``offset`` (where the whole records end)."""

    damage: Damage
    offset: int
    reason: str = ""
    lost: str | None = None  # why records the writer had made durable are lost (the stop is below its mark)

    @property
    def crash_tail(self) -> bool:
        """What a crash legally leaves at the end of the last segment: cut without a report."""
        return self.damage in (Damage.TORN, Damage.ZEROED) and self.lost is None

    @property
    def corruption(self) -> bool:
        """Reported as corruption (recovery's ``corruption_detected``, verify's ``fatal``)."""
        return self.damage in (Damage.GARBAGE, Damage.CORRUPT) or self.lost is not None


def classify_tail(
    res: ScanResult, size: int, read: ReadAt, *, last: bool, mark: Position | None = None, segment_id: int = 0
) -> Verdict:
    """What the bytes of a segment file from ``res.valid_end`` to ``size`` are; never raises.

    ``res``: the scan of the segment's frames; ``read``: the file's bytes (read only
    near the stop, and in bounded steps when looking for zeros or data); ``last``:
    no segment follows and no seal vouches for bytes past the stop; ``mark``: the
    durable mark (below it, any stop in the last segment lost durable records).
    docs/FORMAT.md "Damage" states these rules in prose.
    """
    at = res.valid_end
    lost = records_lost_below_mark(mark, segment_id, at) if last else None
    if res.stop is Stop.END:
        return Verdict(Damage.NONE, at, "", lost)
    if res.stop is Stop.SEALED:
        return _after_seal(at, size, read, last)
    if not last:
        what = res.reason or res.stop.value
        return Verdict(Damage.CORRUPT, at, f"{what} inside a sealed segment (not the log's tail)")
    what = _classify_bad_frame(res, size, read)
    return Verdict(what.damage, at, what.reason, lost)


def _after_seal(at: int, size: int, read: ReadAt, last: bool) -> Verdict:
    """Bytes after a seal: none is clean; zeros in the last segment are a crash before they were cut."""
    if at >= size:
        return Verdict(Damage.NONE, at)
    data_at = first_nonzero(read, at, size)
    if data_at is None and last:
        return Verdict(Damage.ZEROED, at, f"{size - at} zero bytes after the seal (a crash before they were cut)")
    return Verdict(Damage.CORRUPT, at, f"{size - at} bytes after the seal")


def _classify_bad_frame(res: ScanResult, size: int, read: ReadAt) -> Verdict:
    """The verdict on the bad frame at ``res.valid_end`` as if it were at the end of the last segment."""
    at = res.valid_end
    if res.stop is Stop.ZEROED:
        data_at = first_nonzero(read, at, size)
        if data_at is None:
            return Verdict(Damage.ZEROED, at, f"zero-filled tail of {size - at} bytes")
        # A power loss kept later pages of an unacknowledged write while its first page, over
        # preallocated zeros (or a hole), never reached the disk.
        return Verdict(
            Damage.ZEROED, at, f"zero-filled bytes followed by data at offset {data_at}: an unacknowledged write torn"
        )
    head = read(at, _MAX_HEADER)
    lay = frame_layout(head, 0, len(head), FORMAT_MAX_FRAME)
    header_ok = type(lay) is tuple or lay == NEED_MORE
    if res.stop is Stop.TORN:
        found = whole_record_after(read, at, size)
        if found is None:
            return Verdict(Damage.TORN, at, f"record cut off by the end of the file ({size - at} bytes)")
        return Verdict(
            Damage.CORRUPT,
            at,
            f"the record here claims to run past the end of the file, but a whole record starts at {found}: "
            f"a damaged length, not a torn tail",
        )
    if header_ok:
        declared = at + parse_header(head, 0, len(head))[4]  # type: ignore[index]
        if declared < size and first_nonzero(read, declared, size) is None:
            return Verdict(Damage.TORN, at, f"a record cut short over preallocated zeros ({size - at} bytes)")
        hole = first_zero_run(read, at, min(declared, size))
        if hole is not None:
            return Verdict(
                Damage.TORN,
                at,
                f"a write torn into pieces: zeros at offset {hole} inside the record at {at}, data after them "
                f"(an unacknowledged write whose parts reached the disk out of order)",
            )
    found = whole_record_after(read, at, size)
    reason = res.reason or "invalid frame"
    if found is not None:
        return Verdict(Damage.CORRUPT, at, f"{reason}, and a whole record starts at {found}")
    return Verdict(Damage.GARBAGE, at, f"{reason} ({size - at} bytes to the end of the file)")


_MAX_HEADER = 4 + 3 * 10 + 1  # crc, three varints, flags


def first_nonzero(read: ReadAt, start: int, end: int) -> int | None:
    """Offset of the first nonzero byte in ``[start, end)`` (None: all zeros, or the file ends)."""
    pos = start
    while pos < end:
        data = read(pos, min(_PROBE, end - pos))
        if not data:
            return None
        stripped = data.lstrip(b"\x00")
        if stripped:
            return pos + len(data) - len(stripped)
        pos += len(data)
    return None


def first_zero_run(read: ReadAt, start: int, end: int, run: int = ZERO_RUN) -> int | None:
    """Offset of the first run of ``run`` zero bytes that starts in ``[start, end)`` (it may run past ``end``)."""
    zeros = bytes(run)
    pos = start
    while pos < end:
        data = read(pos, min(_PROBE, end - pos) + run - 1)
        i = data.find(zeros)
        if 0 <= i < end - pos:
            return pos + i
        if len(data) < run:
            return None
        pos += len(data) - run + 1
    return None


def whole_record_after(read: ReadAt, at: int, size: int, window: int = RESYNC_WINDOW) -> int | None:
    """The first offset in ``(at, at + window)`` where a whole valid frame starts and the data goes on
    sensibly after it (the end of the file, zeros, or another valid frame); None if there is none.

    Tells a damaged length or a bad frame with records after it from a tail that
    is bad to its end. Bounded: frames are looked for within ``window`` bytes.
    """
    buf = read(at, min(size - at, 2 * window))
    n = len(buf)
    for y in range(1, min(n, window)):
        if n - y < MIN_FRAME_SIZE:
            break
        end = frame_end(buf, y, n)
        if end < 0:
            continue
        if end == n or not any(buf[end : end + MIN_FRAME_SIZE]) or frame_end(buf, end, n) >= 0:
            return at + y
    return None
