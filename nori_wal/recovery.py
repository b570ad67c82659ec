"""Recovery on open: keep the valid prefix, cut off a torn or damaged tail.

Rules:
1. A torn, zero-filled or garbage tail is legal only in the last segment;
   recovery truncates it on disk (then fsyncs) so the next open is clean.
   What the bytes are is ``scan.classify_tail``'s decision, not this module's.
2. Damage inside an earlier (sealed) segment is corruption: CorruptionError,
   never skipped (RocksDB #7701 made holes that way). An open that refuses
   has removed nothing but leftover ``.wal.tmp`` and ``.broken.tmp`` files.
3. A sealed segment is not rescanned: its seal frame gives its record count,
   so reopening a cleanly closed log costs one small read per segment.
4. A last segment whose header is damaged is taken out of the log (the
   contract: damage in the last segment, its header included, never makes
   open raise); a stub (a header cut short, nothing behind it) is removed.
5. A lost segment is corruption: a segment whose header names a predecessor
   that is gone while an older segment is still here (``sequence_problem``;
   GC deletes oldest first, so that was no GC).
6. What recovery trusts it first makes durable: a predecessor killed before
   its fsync left its last writes (records, a seal, a cut, a rename or unlink)
   in the page cache, readable but still lost by a power loss. So the last
   segment is fsynced and the directory too, once per open, even when nothing
   was cut; earlier segments were fsynced before their successor was created.
7. The previous writer's durable mark (``durable_mark.py`` Rule 4), read
   before anything changes it, tells a crash's tail from lost records: a
   last segment cut (or ending) below it, or a mark naming a segment past the
   last one, lost records that writer had made durable. Recovery still cuts
   and opens (the contract: damage in the last segment never makes open
   raise) but sets ``corruption_detected`` and says so in the event.
8. Recovery never destroys what may be evidence: bytes it takes out of the
   log while it reports corruption (a segment with a damaged header, a cut
   tail that is not zeros) are first set aside, durably, in
   ``NNNNNN.wal.OFFSET.broken`` (etcd keeps a ``.broken`` copy the same way),
   for a person to examine and delete. Their ids count as used (DESIGN rule 8:
   names are never reused). A crash's ordinary tail (torn into zeros, zeroed)
   is not kept.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

from . import scan
from .codec import MIN_FRAME_SIZE, SEAL_FRAME_SIZE, Seal, decode_record
from .durable_mark import read_mark, records_lost_below_mark, segments_lost_past_mark
from .errors import CorruptionError
from .fs import FileHandle, FileLayer, replace_durably
from .observe import CorruptionTruncated, Meter
from .position import Position
from .scan import ScanResult, Stop, classify_tail, scan_frames
from .segment import (
    HEADER_SIZE,
    SET_ASIDE_TMP_SUFFIX,
    TMP_SUFFIX,
    check_header,
    header_predecessor,
    segment_ids,
    segment_name,
    sequence_problem,
    set_aside_files,
    set_aside_name,
)

SCAN_CHUNK = 32 * 1024 * 1024  # bytes read per step when scanning a segment


@dataclass(frozen=True)
class RecoveryInfo:
    """What opening the log found and did."""

    valid_records: int  # records in the whole log
    segments_scanned: int  # segments whose records were read (not trusted from a seal)
    bytes_truncated: int  # tail bytes cut off: torn or damaged records, zeros (0 after a clean close)
    corruption_detected: bool  # the cut-off tail held garbage, not just a torn or zeroed write, or
    # records the previous writer had made durable were lost (Rule 7)
    duration_s: float = 0.0
    segment_count: int = 0
    set_aside: tuple[str, ...] = ()  # files (in the log's directory) holding what was taken out (Rule 8)


@dataclass
class RecoveredState:
    """Where appending resumes."""

    segment_ids: list[int]
    next_segment_id: int
    active_end: int  # offset after the last record of the last segment
    active_records: int  # records in the last segment
    active_sealed: bool  # the last segment was sealed (clean close): roll before appending
    total_records: int


def read_seal(handle: FileHandle, size: int) -> Seal | None:
    """The seal at the end of a segment file, if it ends with a valid one."""
    if size < HEADER_SIZE + SEAL_FRAME_SIZE:
        return None
    res = decode_record(handle.pread(SEAL_FRAME_SIZE, size - SEAL_FRAME_SIZE), 0)
    if isinstance(res, Seal) and res.data_end == size - SEAL_FRAME_SIZE:
        return res
    return None


def scan_segment(handle: FileHandle, size: int, limit: int) -> ScanResult:
    """Scan a segment file's records from its header on: mapped when the layer can, else in chunks."""
    mapper = getattr(handle, "map", None)
    if mapper is not None:
        with mapper() as view:
            return scan_frames(view, HEADER_SIZE, limit)
    return scan_in_chunks(handle, size, lambda data, _base: scan_frames(data, 0, limit))


def scan_in_chunks(
    handle: FileHandle,
    size: int,
    scan: Callable[[bytes, int], ScanResult],
    chunk: int = SCAN_CHUNK,
    on_bytes: Callable[[int], None] | None = None,
) -> ScanResult:
    """Run ``scan(data, base)`` over a segment in bounded reads from its header on.

    A frame cut off by the end of one read is carried into the next, so only
    the real end of the file can look torn. Offsets in the result are the file's.
    """
    base, carry, count, compressed = HEADER_SIZE, b"", 0, 0
    while True:
        pos = base + len(carry)
        want = min(chunk, size - pos)
        data = carry + handle.pread(want, pos) if want > 0 else carry
        if on_bytes is not None and want > 0:
            on_bytes(want)
        eof = base + len(data) >= size
        res = scan(data, base)
        count += res.records
        compressed += res.compressed
        left = len(data) - res.valid_end
        more = res.stop is Stop.TORN or (res.stop is Stop.ZEROED and left < MIN_FRAME_SIZE)
        if not eof and (more or res.stop is Stop.END):
            carry = data[res.valid_end :]
            base += res.valid_end
            continue
        return ScanResult(base + res.valid_end, count, res.stop, res.seal, res.reason, compressed)


def first_nonzero(handle: FileHandle, start: int, end: int, chunk: int = 1 << 20) -> int | None:
    """Offset of the first nonzero byte in ``[start, end)`` of a file (None: all zeros, or the file ends)."""
    return scan.first_nonzero(reader_of(handle), start, end)


def is_stub(head: bytes, handle: FileHandle, size: int) -> bool:
    """Whether a segment with an invalid header is a stub (a crash while creating it), not damage.

    A stub's header is cut short, or all zeros with nothing but zeros behind it.
    """
    return len(head) < HEADER_SIZE or (not any(head) and first_nonzero(handle, HEADER_SIZE, size) is None)


def reader_of(handle: FileHandle) -> scan.ReadAt:
    """``classify_tail``'s view of a file: read(offset, size)."""
    return lambda offset, size: handle.pread(size, offset)


@dataclass
class _Pass:
    """What one recovery has done so far (its phases add to it)."""

    directory: str
    limit: int
    meter: Meter
    mark: Position | None
    set_aside: list[str] = field(default_factory=list)
    truncated: int = 0
    corruption: bool = False
    scanned: int = 0
    dir_dirty: bool = False  # (synced at the end, with every open that finds segments)

    def path(self, sid: int) -> str:
        return os.path.join(self.directory, segment_name(sid))


def recover(layer: FileLayer, directory: str, limit: int, meter: Meter) -> tuple[RecoveredState, RecoveryInfo]:
    """Recover the log in ``directory`` (whose lock the caller holds): one function per rule's phase."""
    t0 = time.perf_counter()
    run = _Pass(directory, limit, meter, read_mark(layer, directory))  # Rule 7: before anything changes it
    names = layer.listdir(directory)
    _remove_leftovers(layer, run, names)
    ids = segment_ids(names)
    next_id = max(ids[-1:] + [sid for sid, _, _ in set_aside_files(names)], default=-1) + 1
    predecessors: dict[int, int | None] = {}  # what each segment's header says it follows
    peeled = _peel_bad_headers(layer, run, ids, predecessors)  # Rule 4 (ids loses them)
    total = _count_earlier(layer, run, ids, predecessors)  # Rules 2 and 3
    for sid in ids:  # Rule 5
        problem = sequence_problem(sid, predecessors[sid], ids)
        if problem is not None:
            raise CorruptionError(f"segment {sid} offset 0: {problem}; refusing to open", sid, 0)
    _take_out_peeled(layer, run, peeled)  # Rules 4 and 8, now that nothing refuses the open
    state = RecoveredState(ids, next_id, HEADER_SIZE, 0, False, total)
    if ids:
        _recover_last(layer, run, ids[-1], state)  # Rules 1, 3, 6, 7 and 8
        state.total_records = total + state.active_records
    lost = segments_lost_past_mark(run.mark, ids[-1] if ids else None)  # Rule 7; a hot copy can look so too
    if lost is not None and run.mark is not None:
        run.corruption = True
        meter.event(CorruptionTruncated(run.mark.segment_id, run.mark.offset, 0, lost))
    if ids or run.dir_dirty:
        layer.sync_dir(directory)  # Rule 6: the predecessor's renames and unlinks, and ours
    info = RecoveryInfo(
        state.total_records,
        run.scanned,
        run.truncated,
        run.corruption,
        time.perf_counter() - t0,
        len(ids),
        tuple(run.set_aside),
    )
    meter.histogram("wal_recovery_ms", info.duration_s * 1e3)
    meter.counter("wal_recovery_truncated_bytes_total", run.truncated)
    return state, info


def _remove_leftovers(layer: FileLayer, run: _Pass, names: list[str]) -> None:
    """Delete ``*.wal.tmp`` and ``*.broken.tmp``: a roll or a Rule 8 copy cut short by a crash."""
    for name in names:
        if name.endswith((TMP_SUFFIX, SET_ASIDE_TMP_SUFFIX)):
            layer.unlink(os.path.join(run.directory, name))
            run.dir_dirty = True


class _Peeled(NamedTuple):
    """A last segment whose header did not survive (Rule 4)."""

    segment_id: int
    size: int
    problem: str
    damaged: bool  # a whole header that is wrong, or zeroed with bytes behind it: damage, not a stub


def _peel_bad_headers(
    layer: FileLayer, run: _Pass, ids: list[int], predecessors: dict[int, int | None]
) -> list[_Peeled]:
    """Pop the last segments whose header is invalid off ``ids`` (Rule 4); they are removed later."""
    peeled: list[_Peeled] = []
    while ids:
        h = layer.open_read(run.path(ids[-1]))
        try:
            size = h.size()
            head = h.pread(HEADER_SIZE, 0)
            problem = check_header(head, ids[-1])
            damaged = problem is not None and not is_stub(head, h, size)
        finally:
            h.close()
        if problem is None:
            predecessors[ids[-1]] = header_predecessor(head)
            break
        run.corruption |= damaged
        peeled.append(_Peeled(ids.pop(), size, problem, damaged))
    return peeled


def _count_earlier(layer: FileLayer, run: _Pass, ids: list[int], predecessors: dict[int, int | None]) -> int:
    """Records in every segment but the last (each must be whole: Rules 2 and 3)."""
    total = 0
    for sid in ids[:-1]:
        n, did_scan, predecessors[sid] = _count_sealed(layer, run.directory, sid, run.limit)
        total += n
        run.scanned += did_scan
    return total


def _take_out_peeled(layer: FileLayer, run: _Pass, peeled: list[_Peeled]) -> None:
    """Set aside a damaged header's segment whole (Rule 8), delete a stub (Rule 4)."""
    for p in peeled:
        problem = p.problem
        if p.damaged:
            run.set_aside.append(unused_set_aside_name(layer, run.directory, p.segment_id, 0))
            layer.rename(run.path(p.segment_id), os.path.join(run.directory, run.set_aside[-1]))
            problem += f"; set aside as {run.set_aside[-1]}"
        else:
            layer.unlink(run.path(p.segment_id))
        run.meter.event(CorruptionTruncated(p.segment_id, 0, p.size, f"segment header: {problem}"))
        run.truncated += p.size
        run.dir_dirty = True


def _recover_last(layer: FileLayer, run: _Pass, sid: int, state: RecoveredState) -> None:
    """The last segment: trust its seal, or scan it and cut what ``classify_tail`` says is not records."""
    h = layer.open_append(run.path(sid))
    try:
        size = h.size()
        seal = read_seal(h, size)
        if seal is not None:  # Rule 3
            state.active_end, state.active_records, state.active_sealed = seal.data_end, seal.record_count, True
            cut = False
        else:
            run.scanned += 1
            res = scan_segment(h, size, run.limit)
            state.active_records = res.records
            sealed = res.stop is Stop.SEALED and res.seal is not None
            state.active_end = res.seal.data_end if sealed and res.seal is not None else res.valid_end
            state.active_sealed = sealed
            verdict = classify_tail(res, size, reader_of(h), last=True, mark=run.mark, segment_id=sid)
            cut = res.valid_end < size
            if cut:
                _cut(layer, run, h, sid, verdict, size)
        h.sync()  # Rule 6 (and Rule 1's cut): durable before anything is appended
    finally:
        h.close()
    if not cut:  # (a cut reported it) Rule 7: ending below the mark
        lost = records_lost_below_mark(run.mark, sid, state.active_end)
        if lost is not None:
            run.corruption = True
            run.meter.event(CorruptionTruncated(sid, state.active_end, 0, lost))


def _cut(layer: FileLayer, run: _Pass, h: FileHandle, sid: int, verdict: scan.Verdict, size: int) -> None:
    """Cut the last segment at ``verdict.offset`` (Rule 1), first setting reported damage aside (Rule 8)."""
    end = verdict.offset
    reason = verdict.reason or verdict.damage.value
    if verdict.lost:
        reason += f"; {verdict.lost}"
    if verdict.corruption and first_nonzero(h, end, size) is not None:
        run.set_aside.append(keep_aside(layer, run.directory, h, sid, end, size))
        reason += f"; the cut bytes are set aside in {run.set_aside[-1]}"
        run.dir_dirty = True
    run.corruption |= verdict.corruption
    h.truncate(end)
    run.truncated += size - end
    run.meter.event(CorruptionTruncated(sid, end, size - end, reason))


def keep_aside(
    layer: FileLayer, directory: str, handle: FileHandle, sid: int, start: int, end: int, chunk: int = 1 << 20
) -> str:
    """Copy bytes ``[start, end)`` of segment ``sid`` to its set-aside file, durably; the file's name.

    Written under a temporary name, fsynced, renamed and the directory fsynced,
    all before the caller cuts the segment: a crash in between leaves the
    segment as it was (the next open does this again) or the copy complete.
    """

    def same(kept: FileHandle) -> bool:
        return kept.size() == end - start and all(
            kept.pread(min(chunk, end - at), at - start) == handle.pread(min(chunk, end - at), at)
            for at in range(start, end, chunk)
        )

    name = unused_set_aside_name(layer, directory, sid, start, same)

    def copied() -> Iterator[bytes]:
        pos = start
        while pos < end:
            data = handle.pread(min(chunk, end - pos), pos)
            if not data:
                return
            yield data
            pos += len(data)

    # The tmp name ends in SET_ASIDE_TMP_SUFFIX: an open after a crash mid-copy removes it.
    replace_durably(layer, os.path.join(directory, name), copied())
    return name


def unused_set_aside_name(
    layer: FileLayer, directory: str, sid: int, offset: int, same: Callable[[FileHandle], bool] = lambda _h: False
) -> str:
    """``set_aside_name`` for a file not there yet, or one that holds these bytes already (``same``).

    Bytes cut at the same place earlier (damage, new records, damage again)
    are kept too; the same bytes again (a crash or a failure before the cut
    was made) are not copied twice.
    """
    copy = 1
    while True:
        name = set_aside_name(sid, offset, copy)
        path = os.path.join(directory, name)
        if not layer.exists(path):
            return name
        h = layer.open_read(path)
        try:
            if same(h):
                return name
        finally:
            h.close()
        copy += 1


def _count_sealed(layer: FileLayer, directory: str, sid: int, limit: int) -> tuple[int, int, int | None]:
    """Records in a sealed segment: from its seal, else by a full scan that must be clean.

    Returns (records, 1 if it was scanned, the predecessor its header names).
    """
    h = layer.open_read(os.path.join(directory, segment_name(sid)))
    try:
        size = h.size()
        head = h.pread(HEADER_SIZE, 0)
        problem = check_header(head, sid)
        if problem:
            raise CorruptionError(f"segment {sid} offset 0: {problem}", sid, 0)
        predecessor = header_predecessor(head)
        seal = read_seal(h, size)
        if seal is not None:
            return seal.record_count, 0, predecessor
        res = scan_segment(h, size, limit)
    finally:
        h.close()
    if res.stop is Stop.END or (res.stop is Stop.SEALED and res.valid_end == size):
        return res.records, 1, predecessor
    raise CorruptionError(
        f"segment {sid} offset {res.valid_end}: {res.reason or res.stop.value} inside a sealed segment "
        f"(not the log's tail); refusing to skip it",
        sid,
        res.valid_end,
    )
