"""Read-only inspection of a log directory: what ``verify`` and ``stats`` report.

Rules:
1. Never modifies a file and never takes the writer's lock: it is safe beside a
   running writer. Each segment is read up to the size it had when opened, so a
   segment still growing is judged on a consistent prefix.
2. Judges damage exactly as recovery would (``scan.classify_tail``, the one
   decision, docs/FORMAT.md "Damage"), but reports instead of repairing:
   anything but whole records, a matching seal and end of file inside a sealed
   segment (one that is not the last, or a last one ending with a valid seal
   past the damage) is corruption (``fatal``); at the end of the last segment a
   torn record, a record torn into preallocated zeros, a zero-filled tail, zeros
   followed by data (an unacknowledged write whose pages reached the disk out
   of order) or zeros after the seal is what a crash legally leaves (a warning:
   opening the log cuts it off), while garbage (a record failing its checksum)
   is reported as corruption, as ``RecoveryInfo.corruption_detected`` would. A
   lost segment (recovery's rule 5) is corruption.
3. Every problem names the segment and the byte offset.
4. The durable mark is read first, before any segment (``durable_mark.py``
   Rule 4): everything below it was whole before the scan began, so a last
   segment that stops below it lost records the writer had made durable
   (fatal, as recovery's rule 7 sets ``corruption_detected``), and so does a
   mark naming a segment past the last one.
5. A last segment found sealed past its stop is read again before it is
   called corrupt: a live writer seals only after the records are written and
   fsynced, so a scan may have read a frame mid-write and then see the seal.
6. A file recovery set aside (``NNNNNN.wal.OFFSET.broken``, recovery's Rule 8)
   is a warning: the damage it holds was reported when it was cut off, and it
   stays until a person deletes it.

The fast path (``detailed=False``) checks headers, every frame's CRC and the
seals with ``scan.scan_frames``, and decompresses every compressed value (a
reader must: one that does not is corruption); the detailed walk also gathers
per-record figures for ``stats``. ``deep`` is kept for callers; it adds nothing.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Callable

import zstandard
from crc32c import crc32c

from .codec import (
    COMPRESSION_MASK,
    COMPRESSION_SHIFT,
    FLAG_SEAL,
    FLAG_TOMBSTONE,
    FLAG_TTL,
    FORMAT_MAX_FRAME,
    MIN_FRAME_SIZE,
    NEED_MORE,
    SEAL_FRAME_SIZE,
    ZEROED,
    Seal,
    build_record,
    decode_record,
    frame_layout,
)
from .durable_mark import read_mark, segments_lost_past_mark
from .fs import OS, FileHandle, FileLayer, writer_lock_held
from .position import Position
from .record import Compression
from .recovery import first_nonzero, is_stub, read_seal, reader_of, scan_in_chunks
from .scan import Damage, ScanResult, Stop, classify_tail, scan_frames
from .segment import (
    HEADER_SIZE,
    check_header,
    header_predecessor,
    parse_segment_name,
    segment_ids,
    segment_name,
    sequence_problem,
    set_aside_files,
)

READ_CHUNK = 8 * 1024 * 1024  # bytes read per step
_U32 = struct.Struct("<I")

Progress = Callable[[int, int, int], None]
"""progress(bytes_done, bytes_total, segment_id): called as the scan moves on."""


class NotAWalDirectory(Exception):
    """The path does not exist, is not a directory, or holds no segments."""


@dataclass(frozen=True)
class Problem:
    """Something wrong at (segment, offset). ``fatal`` is corruption; otherwise a warning."""

    segment_id: int
    offset: int
    message: str
    fatal: bool

    def __str__(self) -> str:
        return f"segment {self.segment_id} offset {self.offset}: {self.message}"


@dataclass
class SegmentScan:
    """What one segment file holds, up to the first thing that is not a whole record."""

    segment_id: int
    size: int  # file size when opened
    header_problem: str | None = None
    stub: bool = False  # the invalid header is a stub's (recovery.is_stub): a crash while creating it
    predecessor: int | None = None  # the segment its header says it follows
    records: int = 0
    valid_end: int = 0  # offset past the last whole record (past the seal if sealed)
    stop: Stop = Stop.END
    reason: str = ""
    seal: Seal | None = None
    # Filled by the detailed walk only:
    first_offset: int | None = None
    last_offset: int | None = None
    tombstones: int = 0
    with_ttl: int = 0
    by_compression: dict[str, int] = field(default_factory=dict)
    frame_bytes: int = 0  # bytes of record frames
    key_bytes: int = 0
    value_bytes_stored: int = 0  # all values as stored on disk
    compressed_stored: int = 0  # stored bytes of the compressed values
    compressed_raw: int = 0  # their uncompressed size
    largest_frame: int = 0

    @property
    def sealed(self) -> bool:
        return self.stop is Stop.SEALED


@dataclass
class LogReport:
    """The segments of a log directory and what is wrong with them."""

    directory: str
    segments: list[SegmentScan]
    problems: list[Problem]
    detailed: bool
    live_writer: bool = False  # a writer held the directory: its last segment was still growing

    @property
    def ok(self) -> bool:
        """No corruption (warnings allowed)."""
        return not any(p.fatal for p in self.problems)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.segments)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def first_position(self) -> Position | None:
        for s in self.segments:
            if s.first_offset is not None:
                return Position(s.segment_id, s.first_offset)
        return None

    @property
    def last_position(self) -> Position | None:
        for s in reversed(self.segments):
            if s.last_offset is not None:
                return Position(s.segment_id, s.last_offset)
        return None


def check_directory(directory: str) -> None:
    """Raise NotAWalDirectory if ``directory`` does not exist or is not a directory."""
    if not os.path.exists(directory):
        raise NotAWalDirectory(f"{directory}: no such directory")
    if not os.path.isdir(directory):
        raise NotAWalDirectory(f"{directory}: not a directory")


def list_segments(directory: str, layer: FileLayer = OS) -> list[int]:
    """Segment ids in ``directory``; raises NotAWalDirectory for a wrong path (junk files are ignored)."""
    check_directory(directory)
    return segment_ids(layer.listdir(directory))


def inspect_log(
    directory: str | os.PathLike[str],
    *,
    detailed: bool = False,
    deep: bool = False,
    progress: Progress | None = None,
    layer: FileLayer = OS,
) -> LogReport:
    """Scan every segment of the log in ``directory`` (read-only); see the module's rules.

    Raises NotAWalDirectory when the path is wrong or holds no segments.
    """
    directory = os.fspath(directory)
    check_directory(directory)
    mark = read_mark(layer, directory)  # Rule 4: first, so all below it was whole before the scan
    ids = segment_ids(layer.listdir(directory))
    if not ids:
        raise NotAWalDirectory(f"{directory}: no segments (NNNNNN.wal files) here; not a nori-wal log?")
    sizes: dict[int, int] = {}
    for sid in ids:
        try:
            sizes[sid] = os.stat(os.path.join(directory, segment_name(sid))).st_size
        except FileNotFoundError:
            pass
    total = sum(sizes.values())
    done = 0
    segments: list[SegmentScan] = []
    problems: list[Problem] = []
    live = writer_lock_held(directory) is True if layer is OS else False
    for i, sid in enumerate(ids):
        last = i == len(ids) - 1
        try:
            h = layer.open_read(os.path.join(directory, segment_name(sid)))
        except FileNotFoundError:  # deleted by GC since we listed: nothing to check
            done += sizes.get(sid, 0)
            continue

        def step(n: int, _sid: int = sid) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(done, total, _sid)

        try:
            seg = scan_segment(h, sid, detailed=detailed or deep, deep=deep, on_bytes=step)
            if last and _sealed_past_stop(seg, h):
                # Rule 5: read it again, and judge it as the sealed segment it is (a frame read
                # mid-write is whole now; bytes still bad are damage under a seal).
                seg = scan_segment(h, sid, detailed=detailed or deep, deep=deep)
                last = False
            problems.extend(judge_segment(seg, last, h, live_writer=live, mark=mark))
        finally:
            h.close()
        segments.append(seg)
    lost = segments_lost_past_mark(mark, ids[-1])
    if lost is not None and mark is not None:
        problems.append(Problem(mark.segment_id, mark.offset, lost, True))
    problems.extend(sequence_problems(segments, list_segments(directory, layer)))
    problems.extend(set_aside_warnings(directory, layer))
    problems.extend(stray_name_warnings(layer.listdir(directory)))
    if progress is not None:
        progress(total, total, ids[-1])
    return LogReport(directory, segments, problems, detailed or deep, live)


def stray_name_warnings(names: list[str]) -> list[Problem]:
    """A warning for each ``<digits>.wal`` file that is not a segment's exact name (every tool ignores it)."""
    out = []
    for name in sorted(names):
        stem = name[: -len(".wal")]
        if name.endswith(".wal") and stem.isdigit() and parse_segment_name(name) is None:
            out.append(
                Problem(
                    int(stem),
                    0,
                    f"{name} is not a segment name (segment {int(stem)} would be {segment_name(int(stem))}): "
                    f"every tool ignores it; rename it if it belongs to the log",
                    False,
                )
            )
    return out


def set_aside_warnings(directory: str, layer: FileLayer = OS) -> list[Problem]:
    """A warning for each file recovery set aside (recovery Rule 8): damage cut off the log, kept for a person."""
    found = []
    for sid, offset, name in set_aside_files(layer.listdir(directory)):
        try:
            h = layer.open_read(os.path.join(directory, name))
        except FileNotFoundError:  # deleted since we listed
            continue
        try:
            size = h.size()
        finally:
            h.close()
        found.append(
            Problem(
                sid,
                offset,
                f"{size} bytes that opening the log cut off as damage are set aside in "
                f"{name}: examine them, then delete the file",
                False,
            )
        )
    return found


def sequence_problems(segments: list[SegmentScan], present: list[int]) -> list[Problem]:
    """Lost segments, as recovery judges them (``segment.sequence_problem``), given the ids ``present`` now.

    ``present`` is listed after the scan, so segments GC deleted meanwhile count
    as deleted, not lost. A gap before a segment whose header names no
    predecessor (an older version wrote it) cannot be judged: a warning.
    """
    out = []
    for prev, seg in zip([None, *segments], segments):
        sid = seg.segment_id
        if seg.header_problem is not None:
            continue
        if seg.predecessor is not None:
            problem = sequence_problem(sid, seg.predecessor, present)
            if problem is not None:
                out.append(Problem(sid, 0, problem, True))
        elif prev is not None and prev.segment_id + 1 != sid:
            out.append(
                Problem(
                    sid,
                    0,
                    f"segments {prev.segment_id + 1}..{sid - 1} are missing after "
                    f"{segment_name(prev.segment_id)}, and this segment's header does not "
                    f"say which it follows (an older version wrote it): records may be "
                    f"lost",
                    False,
                )
            )
    return out


def scan_segment(
    handle: FileHandle,
    segment_id: int,
    *,
    detailed: bool = False,
    deep: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> SegmentScan:
    """Check one segment's header and walk its frames in bounded chunks (offsets are absolute)."""
    size = handle.size()
    seg = SegmentScan(segment_id, size)
    head = handle.pread(HEADER_SIZE, 0)
    problem = check_header(head, segment_id)
    if problem is None:
        seg.predecessor = header_predecessor(head)
    else:
        seg.header_problem = problem
        seg.stub = is_stub(head, handle, size)
        seg.stop, seg.reason = Stop.CORRUPT, f"segment header: {problem}"
        if on_bytes:
            on_bytes(size)
        return seg
    if on_bytes:
        on_bytes(min(size, HEADER_SIZE))

    def fast(data: bytes, base: int) -> ScanResult:
        res = scan_frames(data, 0, FORMAT_MAX_FRAME)
        if res.compressed:  # a CRC is no proof a value decompresses: walk this chunk, decompressing
            return _walk(data, base, SegmentScan(segment_id, size), True)
        return res

    res = scan_in_chunks(
        handle,
        size,
        lambda data, base: _walk(data, base, seg, True) if detailed else fast(data, base),
        READ_CHUNK,
        on_bytes,
    )
    seg.records = res.records
    seg.valid_end, seg.stop, seg.seal, seg.reason = res.valid_end, res.stop, res.seal, res.reason
    return seg


def _sealed_past_stop(seg: SegmentScan, handle: FileHandle) -> bool:
    """Whether a segment whose scan stopped at bad bytes now ends with a valid seal past them."""
    if seg.header_problem is not None or seg.stop not in (Stop.TORN, Stop.ZEROED, Stop.CORRUPT):
        return False
    seal = read_seal(handle, handle.size())
    return seal is not None and seal.data_end > seg.valid_end


def judge_segment(
    seg: SegmentScan, last: bool, handle: FileHandle, *, live_writer: bool = False, mark: Position | None = None
) -> list[Problem]:
    """The problems of a scanned segment: ``scan.classify_tail``'s verdict, in words (module rule 2).

    ``live_writer``: a writer holds the directory, so zeros after the last segment's
    records are the durable zeros it keeps ahead of its writes, not a crash's tail.
    ``mark``: the durable mark read before the scan (module rule 4).
    """
    sid = seg.segment_id
    if seg.header_problem is not None:
        return [_header_problem(seg, last)]
    out = _seal_problems(seg) if seg.stop is Stop.SEALED else []
    res = ScanResult(seg.valid_end, seg.records, seg.stop, seg.seal, seg.reason)
    verdict = classify_tail(res, seg.size, reader_of(handle), last=last, mark=mark, segment_id=sid)
    if verdict.damage is Damage.NONE:
        if verdict.lost is not None:
            out.append(Problem(sid, seg.valid_end, f"the segment ends here: {verdict.lost}", True))
        elif not last and seg.stop is Stop.END:
            out.append(
                Problem(
                    sid,
                    seg.valid_end,
                    "segment is not sealed, though later segments exist (its records are whole)",
                    False,
                )
            )
        return out
    cut = seg.size - seg.valid_end
    if verdict.lost is not None:
        message = (
            f"{verdict.reason}: opening the log would cut off {cut} bytes from here, "
            f"cutting records the writer had made durable ({verdict.lost})"
        )
    elif verdict.damage is Damage.CORRUPT and not last:
        message = f"{verdict.reason}: {cut} bytes from here are unreadable"
    elif verdict.corruption:
        message = f"{verdict.reason} in the last segment: opening the log would cut off {cut} bytes from here"
    elif live_writer and verdict.damage is Damage.ZEROED and first_nonzero(handle, seg.valid_end, seg.size) is None:
        return out  # the live writer's preallocated zeros: nothing wrong
    else:
        kind = "torn tail" if verdict.damage is Damage.TORN else "crash's tail"
        message = f"{kind}: {verdict.reason} (a crash; opening the log cuts off {cut} bytes from here)"
    out.append(Problem(sid, seg.valid_end, message, verdict.corruption))
    return out


def _header_problem(seg: SegmentScan, last: bool) -> Problem:
    """A bad header: corruption, but a stub last segment (a crash while creating it) is recovery's to remove."""
    if last and seg.stub:
        return Problem(
            seg.segment_id,
            0,
            f"segment header: {seg.header_problem}, nothing behind it (a crash while creating the "
            f"segment; opening the log removes it)",
            False,
        )
    return Problem(seg.segment_id, 0, f"bad segment header: {seg.header_problem}", True)


def _seal_problems(seg: SegmentScan) -> list[Problem]:
    """A seal that disagrees with the records before it (where they end, how many there are)."""
    assert seg.seal is not None
    out = []
    sid, seal_at = seg.segment_id, seg.valid_end - SEAL_FRAME_SIZE
    if seg.seal.data_end != seal_at:
        out.append(
            Problem(sid, seal_at, f"seal says the records end at {seg.seal.data_end}, they end at {seal_at}", True)
        )
    if seg.seal.record_count != seg.records:
        out.append(
            Problem(sid, seal_at, f"seal counts {seg.seal.record_count} records, the segment holds {seg.records}", True)
        )
    return out


def _raw_size(stored: memoryview, compression: int) -> int:
    """The uncompressed size a compressed value declares (without decompressing it)."""
    if compression == Compression.LZ4 and len(stored) >= 4:
        return int(_U32.unpack_from(stored, 0)[0])
    if compression == Compression.ZSTD:
        try:
            n = zstandard.frame_content_size(bytes(stored[:18]))
        except zstandard.ZstdError:
            return len(stored)
        return n if n >= 0 else len(stored)
    return len(stored)


_COMP_NAMES = {c.value: c.name for c in Compression}


def _walk(buf: bytes, base: int, seg: SegmentScan, deep: bool) -> ScanResult:
    """Walk ``buf``'s frames one by one, adding per-record figures to ``seg``; classify the stop
    exactly as ``scan_frames`` does."""
    mv = memoryview(buf)
    n = len(buf)
    off, count = 0, 0
    while off < n:
        lay = frame_layout(buf, off, n, FORMAT_MAX_FRAME)
        if type(lay) is int:
            if lay == NEED_MORE:
                return ScanResult(off, count, Stop.TORN, reason="record cut off by the end of the data")
            if lay == ZEROED:
                return ScanResult(off, count, Stop.ZEROED, reason="zero-filled bytes")
            res = decode_record(buf, off)
            return ScanResult(off, count, Stop.CORRUPT, reason=getattr(res, "reason", "invalid frame"))
        flags, _ttl, ks, vs, end = lay  # type: ignore[misc]
        if crc32c(mv[off + 4 : end]) != _U32.unpack_from(buf, off)[0]:
            if not any(buf[off : off + MIN_FRAME_SIZE]):
                return ScanResult(off, count, Stop.ZEROED, reason="zero-filled bytes")
            return ScanResult(off, count, Stop.CORRUPT, reason="checksum mismatch")
        if flags & FLAG_SEAL:
            res = decode_record(buf, off)
            if isinstance(res, Seal):
                return ScanResult(res.end, count, Stop.SEALED, seal=res)
            return ScanResult(off, count, Stop.CORRUPT, reason=getattr(res, "reason", "invalid frame"))
        comp = (flags & COMPRESSION_MASK) >> COMPRESSION_SHIFT
        if deep and comp:
            rec = build_record(buf, lay, FORMAT_MAX_FRAME)  # type: ignore[arg-type]
            if isinstance(rec, str):
                return ScanResult(off, count, Stop.CORRUPT, reason=rec)
        # Per-record figures.
        pos = base + off
        if seg.first_offset is None:
            seg.first_offset = pos
        seg.last_offset = pos
        size = end - off
        seg.frame_bytes += size
        seg.largest_frame = max(seg.largest_frame, size)
        seg.key_bytes += vs - ks
        stored = end - vs
        seg.value_bytes_stored += stored
        if flags & FLAG_TOMBSTONE:
            seg.tombstones += 1
        if flags & FLAG_TTL:
            seg.with_ttl += 1
        if comp:
            name = _COMP_NAMES.get(comp, str(comp))
            seg.by_compression[name] = seg.by_compression.get(name, 0) + 1
            seg.compressed_stored += stored
            seg.compressed_raw += _raw_size(mv[vs:end], comp)
        count += 1
        off = end
    return ScanResult(off, count, Stop.END)


def check_start(directory: str | os.PathLike[str], start: Position, layer: FileLayer = OS) -> str | None:
    """None if a reader may start at ``start``, else why not (read-only).

    Fine: a segment before the first one (GC moved on), offset 0 or the header
    size of an existing segment, an offset where a whole record starts, or the
    end of the records; also any position in a segment not created yet. Not fine:
    an offset in the middle of a record or past the end of a segment.
    """
    directory = os.fspath(directory)
    ids = list_segments(directory, layer)
    if start.segment_id not in ids or start.offset <= HEADER_SIZE:
        return None
    try:
        h = layer.open_read(os.path.join(directory, segment_name(start.segment_id)))
    except FileNotFoundError:
        return None
    try:
        size = h.size()
        if start.offset > size:
            return f"segment {start.segment_id} is only {size} bytes long"
        base, carry = HEADER_SIZE, b""
        while True:
            pos = base + len(carry)
            want = min(READ_CHUNK, start.offset - pos)
            data = carry + h.pread(want, pos) if want > 0 else carry
            res = scan_frames(data, 0, FORMAT_MAX_FRAME)
            if res.stop is Stop.END and base + res.valid_end == start.offset:
                return None
            if res.stop is Stop.TORN and base + len(data) < start.offset:
                carry, base = data[res.valid_end :], base + res.valid_end
                continue
            if res.stop is Stop.END and base + len(data) < start.offset:
                carry, base = b"", base + res.valid_end
                continue
            at = base + res.valid_end
            if res.stop is Stop.TORN:
                return f"offset {start.offset} is inside the record at {start.segment_id}:{at}"
            if res.stop is Stop.SEALED:
                return f"offset {start.offset} is past the end of segment {start.segment_id}'s records"
            return (
                f"segment {start.segment_id} holds no whole records from offset {at} "
                f"({res.reason or res.stop.value}), before {start.offset}"
            )
    finally:
        h.close()
