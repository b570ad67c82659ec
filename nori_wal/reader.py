"""Readers: iterate records straight from segment files, in any process.

A reader never repairs and never takes the writer's lock. It yields only
whole, checksummed records; at the end of what is written (a half-written
record included) it returns None ("not yet") and, called again, continues
from the same place once more bytes exist. Damage before the end, or inside
a sealed segment, raises CorruptionError naming the segment and offset. A
last segment is sealed too once it ends with a valid seal past the stop (a
clean close): bytes there that are not records are damage, not the end. As a
live writer seals only after its records are written and fsynced, a frame
read mid-write is whole once the seal shows: the bytes are read once more
before they are called damage.

Segments deleted by GC while a reader runs: an open file stays readable
(POSIX), so the reader finishes the segment it holds; if the next segment
that remains does not follow it (its header names another predecessor), the
records in between were deleted unread and the reader raises
RecordsDeletedError naming the gap, as it does for a start in a deleted
segment (other than Position(0, 0), the oldest record). With
``on_gap="skip"`` it moves on to the first segment that remains instead.
Consumers' cursors keep GC behind them (``retention``).

With ``durable_only`` a reader yields only records the writer has fsynced:
it reads no further than the durable mark the writer publishes
(``durable_mark.py``), so a consumer never acts on a record a power loss
could still take. Under the Os policy that mark moves only when a segment is
sealed (or on ``sync``).

Zero-copy values: a value of at least 64 KiB (``codec.ZERO_COPY_MIN``) stored
uncompressed is a memoryview into the reader's read buffer (1 MiB or more),
not a copy; keeping the value keeps that whole buffer alive. To keep a few
values from many buffers, keep ``bytes(record.value)`` instead.

A segment lost from the middle of the log is not skipped: entering a segment
whose predecessor (its header names it) is gone while an older segment is
still there raises CorruptionError (``segment.sequence_problem``). A stray
segment (one between a segment and the predecessor it names) is only seen
at the segment after it: its records have been yielded by then.

A reader belongs to one thread; ``close`` may come from another (to stop a
follower): it waits for a read in progress, and the iteration ends quietly
at its next step.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from operator import length_hint
from typing import Iterator, NamedTuple

from crc32c import crc32c

from .codec import (
    CORRUPT,
    FLAG_SEAL,
    FORMAT_MAX_FRAME,
    MIN_FRAME_SIZE,
    NEED_MORE,
    ZEROED,
    Seal,
    build_record,
    decode_record,
    frame_layout,
    parse_header,
    put_run,
)
from .durable_mark import MarkReader
from .errors import CorruptionError, RecordsDeletedError, WalClosedError, WalError, WalIOError
from .fs import OS, FileHandle, FileLayer
from .position import Position, make_position
from .record import Record
from .recovery import is_stub, read_seal, reader_of
from .scan import Damage, ScanResult, Stop, Verdict, classify_tail
from .segment import HEADER_SIZE, check_header, header_predecessor, segment_ids, segment_name, sequence_problem
from .waiters import Waiter, follow_waiter

READ_SIZE = 1024 * 1024  # bytes per read: large sequential reads, few syscalls
RUN_RECORDS = 128  # records a fast run builds at once: few enough to stay in the cache and not to wake the GC
FAST_MAX_VALUE = 0x4000  # larger values take next_record, which may hand out a view
_U32 = struct.Struct("<I")
_CLOSED = object()  # what a step returns once the reader is closed
_new = tuple.__new__  # a NamedTuple from a tuple, without its __new__ (once per run)
Item = tuple[Record, Position]


class _Run(NamedTuple):
    """Records iteration hands out together (``WalReader.runs``), and what to know once some are."""

    pairs: list[Item]
    it: Iterator[Item]  # over ``pairs``: what it has left is not handed out yet
    end: int  # the offset where the last of ``pairs`` ends (in its segment)
    before: tuple[Position, int] | None  # the last record handed out before this run, and where it ends


_DONE: Iterator[Item] = iter(())


class WalReader:
    """Iterates ``(record, position)`` from ``start`` across segments."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        start: Position = Position(0, 0),
        *,
        layer: FileLayer = OS,
        follow: bool = False,
        poll_interval: float = 0.05,
        limit: int = FORMAT_MAX_FRAME,
        durable_only: bool = False,
        on_gap: str = "raise",
        waiter: Waiter | None = None,
    ):
        if on_gap not in ("raise", "skip"):
            raise ValueError(f"on_gap must be 'raise' or 'skip', got {on_gap!r}")
        self.on_gap = on_gap
        self.dir = os.fspath(directory)
        self._layer = layer
        self._start = Position.coerce(start)  # also 'SEG:OFF' and [seg, off]
        self.follow = follow
        self.poll_interval = poll_interval
        self._waiter = waiter  # follow mode: how to wait at the end (None: made at the first wait, owned)
        self._owns_waiter = False
        self._limit = limit
        self._seg: int | None = None
        self._fh: FileHandle | None = None
        self._buf: bytes = b""
        self._base = 0  # file offset of _buf[0]
        self._i = 0  # index of the next frame in _buf (past the run being handed out, see _runs)
        self._run = _Run([], _DONE, 0, None)
        self._closed = False
        self._io_lock = threading.RLock()  # close() from another thread never closes a file mid-read
        self._mark = MarkReader(layer, self.dir) if durable_only else None
        self._verdict = Verdict(Damage.NONE, 0)  # the last tail judged, and where (see _damage_before_end)
        self._verdict_key: tuple[int | None, int, int] | None = None
        if not layer.exists(self.dir):  # through the layer: readers run on FaultFS too
            # Only WalError subclasses cross the public API (the OSError chained, as for a failed read).
            missing = FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.dir)
            raise WalIOError(f"no WAL directory at {self.dir}") from missing

    # -- public ------------------------------------------------------------------------

    @property
    def position(self) -> Position | None:
        """Position of the next record to read (None before the first segment is found)."""
        if self._seg is None:
            return None
        run = self._run
        left = length_hint(run.it)
        return run.pairs[-left][1] if left else Position(self._seg, self._base + self._i)

    def next_record(self) -> tuple[Record, Position] | None:
        """The next whole record and its position, or None at the current end of the log.

        Raises CorruptionError for damage before the end, WalIOError when the OS
        fails a read (the OSError chained), WalClosedError after ``close``.
        """
        self._settle()
        item = self._step()
        if item is _CLOSED:
            raise WalClosedError("reader is closed")
        return item  # type: ignore[return-value]

    def _step(self) -> tuple[Record, Position] | None | object:
        """``next_record``, or _CLOSED; holds the I/O lock while it reads (see ``close``)."""
        with self._io_lock:
            if self._closed:
                return _CLOSED
            try:
                return self._next_record()
            except WalError:  # already says what failed (a WalIOError is an OSError too)
                raise
            except OSError as exc:
                raise WalIOError(f"reading segment {self._seg} of {self.dir} failed: {exc.strerror or exc}") from exc

    def _next_record(self) -> tuple[Record, Position] | None:
        while True:
            if self._fh is None and not self._open_first():
                return None
            buf, i = self._buf, self._i
            lay = frame_layout(buf, i, len(buf), self._limit)
            if type(lay) is tuple:
                flags, _ttl, _ks, _vs, end = lay
                if crc32c(memoryview(buf)[i + 4 : end]) == _U32.unpack_from(buf, i)[0]:
                    if flags & FLAG_SEAL:
                        if not self._next_segment(after_seal=True):
                            return None
                        continue
                    rec = build_record(buf, lay, self._limit)
                    if type(rec) is str:
                        raise self._corrupt(i, rec)
                    self._i = end
                    return rec, make_position((self._seg, self._base + i))  # type: ignore[return-value, arg-type]
                lay = ZEROED if not any(buf[i : i + MIN_FRAME_SIZE]) else CORRUPT
                if lay == CORRUPT and self._damage_before_end(i, Stop.CORRUPT):
                    if self._refill(i):
                        continue  # the bytes changed under us: a write was landing (see _refill)
                    raise self._corrupt(self._i, "checksum mismatch")  # _refill moved the buffer to i
            if lay == CORRUPT and self._damage_before_end(i, Stop.CORRUPT):
                if self._refill(i):
                    continue
                raise self._corrupt(self._i, "invalid frame (bad lengths or flags)")
            # NEED_MORE, ZEROED, or bad bytes at the tail: read on, or move on, or stop.
            if self._refill(i):
                continue
            if not self._next_segment(after_seal=False):
                if lay == NEED_MORE and self._i < len(self._buf) and self._damage_before_end(self._i, Stop.TORN):
                    raise self._corrupt(self._i, self._verdict.reason)  # a damaged length, records after it
                return None

    def __iter__(self) -> Iterator[Item]:
        """Iterate to the current end of the log (or, with ``follow``, forever).

        Records are read a run at a time (``runs``: up to RUN_RECORDS built
        before the first is handed out); ``position`` still names the next one
        handed out. After ``close`` (from the loop's body or from another
        thread) the iteration ends quietly at its next step.
        """
        for _seg, run in self.runs():
            for item in run:
                yield item
                if self._closed:
                    return

    def runs(self) -> Iterator[tuple[int, Iterator[Item]]]:
        """The records from the next one on, a run at a time, each with the segment it is in.

        A run is up to RUN_RECORDS plain puts from the read buffer, built in one
        loop (``codec.put_run``), or one record of ``next_record``, which holds
        the rules (every buffer edge, seal and other frame). What a run has not
        handed out when an iteration stops is read again by the next (``_settle``).
        """
        self._settle()
        while True:
            seg = self._seg or 0  # (before the first segment the buffer is empty)
            pairs, end = put_run(self._buf, self._i, self._limit, FAST_MAX_VALUE, RUN_RECORDS, seg, self._base)
            if pairs:
                self._i = end
            else:
                item = self._step()
                if item is _CLOSED:
                    return
                if item is None:  # the end for now
                    self._run = _Run([], _DONE, 0, self._handed_out())  # (not holding on to the records meanwhile)
                    if not self.follow:
                        return
                    self.wait_for_more()  # follow mode: the writer's wake-up, or poll_interval
                    continue
                pairs, seg = [item], self._seg  # type: ignore[list-item, assignment]
            it = iter(pairs)
            last = self._run  # all handed out (an iteration that stopped inside a run ended there)
            before = (last.pairs[-1][1], last.end) if last.pairs else last.before
            self._run = _new(_Run, (pairs, it, self._base + self._i, before))
            yield seg, it

    def last_read(self) -> tuple[Position, Position] | None:
        """The last record iteration handed out and where it ends (None: none yet; ``next_record``'s do not count)."""
        last = self._handed_out()
        return None if last is None else (last[0], Position(last[0].segment_id, last[1]))

    def _handed_out(self) -> tuple[Position, int] | None:
        """``last_read`` with the end as an offset in the record's segment."""
        run = self._run
        pairs = run.pairs
        k = len(pairs) - length_hint(run.it)
        if k == 0:
            return run.before
        return pairs[k - 1][1], pairs[k][1].offset if k < len(pairs) else run.end

    def _settle(self) -> None:
        """Give back what the last run did not hand out (an iteration stopped in it): it is read next."""
        run = self._run
        left = length_hint(run.it)
        if left:
            before = self._handed_out()
            self._i = run.pairs[-left][1].offset - self._base  # (the buffer has not moved since the run)
            self._run = _Run([], _DONE, 0, before)

    def wait_for_more(self) -> None:
        """Follow mode's pause at the end: until the writer says the durable end moved, at most ``poll_interval``.

        Waits on the writer's wake-up socket (``waiters.SubWaiter``; a durable
        move wakes it at once) or polls its durable mark when no writer runs.
        """
        waiter = self._waiter
        if waiter is None:
            with self._io_lock:
                if self._closed:
                    return
                waiter = self._waiter = follow_waiter(self.dir, self._layer)
                self._owns_waiter = True
        waiter.wait(self.poll_interval)

    def close(self) -> None:
        """Release the files. Safe from another thread than the one iterating.

        That thread's read in progress finishes first (a descriptor closed under a
        pread could even be reused by another file meanwhile); its iteration then
        ends quietly at its next step (a follower within ``poll_interval``), while
        ``next_record`` raises WalClosedError. Idempotent.
        """
        self._closed = True
        with self._io_lock:
            if self._owns_waiter and self._waiter is not None:
                self._waiter.close()  # ends a wait in progress (it holds no lock of ours)
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            if self._mark is not None:
                self._mark.close()
            self._buf = b""

    def __enter__(self) -> "WalReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- segments and buffers ---------------------------------------------------------------

    def _corrupt(self, i: int, why: str) -> CorruptionError:
        off = self._base + i
        return CorruptionError(f"segment {self._seg} offset {off}: {why} ({self.dir})", self._seg, off)

    def _file_size(self) -> int:
        assert self._fh is not None
        return self._fh.size()

    def _ids(self) -> list[int]:
        return segment_ids(self._layer.listdir(self.dir))

    def _damage_before_end(self, i: int, stop: Stop) -> bool:
        """Whether the bad bytes at ``_buf[i]`` are damage to raise, not the end of what is written.

        In a segment with a successor, a bad frame is damage (a cut-off one is
        ``_next_segment``'s to judge). In the last segment, ``scan.classify_tail``
        decides: only bad bytes with whole records after them (CORRUPT) are; a
        crash's tail, and garbage running to the end of the file (recovery's to
        cut and report; a reader cannot tell it from a write in flight), are the end.
        """
        if any(s > self._seg for s in self._ids()):  # type: ignore[operator]
            return stop is Stop.CORRUPT
        assert self._fh is not None
        size = self._fh.size()
        if stop is Stop.TORN and self._base + len(self._buf) < size:
            return False  # the buffer stops short of the file (the durable mark): nothing is known past it
        key = (self._seg, self._base + i, size)
        if self._verdict_key != key:  # (a follower polls a torn tail: judge it once per size)
            res = ScanResult(self._base + i, 0, stop, reason="checksum mismatch or invalid frame")
            self._verdict = classify_tail(res, size, reader_of(self._fh), last=True)
            self._verdict_key = key
        return self._verdict.damage is Damage.CORRUPT

    def _open_first(self) -> bool:
        ids = [s for s in self._ids() if s >= self._start.segment_id]
        if not ids:
            return False
        offset = self._start.offset if ids[0] == self._start.segment_id else HEADER_SIZE
        return self._open_segment(ids, max(offset, HEADER_SIZE))

    def _open_segment(self, ids: list[int], offset: int) -> bool:
        """Open the first of ``ids`` that still exists, positioned at ``offset``."""
        for sid in ids:
            try:
                fh = self._layer.open_read(os.path.join(self.dir, segment_name(sid)))
            except FileNotFoundError:  # deleted by GC since we listed: try the next
                offset = HEADER_SIZE
                continue
            except OSError as exc:
                raise WalIOError(f"opening segment {sid} of {self.dir} failed: {exc.strerror or exc}") from exc
            try:
                head = fh.pread(HEADER_SIZE, 0)
            except OSError as exc:
                fh.close()
                raise WalIOError(f"reading segment {sid} of {self.dir} failed: {exc.strerror or exc}") from exc
            problem = check_header(head, sid)
            if problem is None:
                predecessor = header_predecessor(head)
                if predecessor is not None and predecessor != self._seg:  # not the one just read: look
                    problem = sequence_problem(sid, predecessor, self._ids())
            if problem and sid == ids[-1] and is_stub(head, fh, fh.size()) and sid == max(self._ids()):
                fh.close()  # a last segment whose creation a crash cut short: nothing here yet (recovery removes it)
                return False
            gap = None if problem else self._deleted_gap(sid, header_predecessor(head))
            if problem or gap:
                fh.close()
                if gap:
                    raise gap
                raise CorruptionError(f"segment {sid} offset 0: {problem} ({self.dir})", sid, 0)
            if self._fh is not None:
                self._fh.close()
            self._fh, self._seg = fh, sid
            self._base, self._buf, self._i = offset, self._read(READ_SIZE, offset), 0
            return True
        return False

    def _deleted_gap(self, sid: int, predecessor: int | None) -> RecordsDeletedError | None:
        """The error for records GC deleted before this reader got to them, entering segment ``sid``; else None.

        Moving on from a segment, the next one must follow it (its header names
        it); opening at ``start``, ``start``'s segment must still be there unless
        ``start`` is Position(0, 0) (the oldest record) or ``sid`` begins the log.
        """
        if self.on_gap == "skip" or predecessor is None:
            return None
        if self._seg is not None:
            if predecessor <= self._seg:
                return None
            since = Position(self._seg, self._base + self._i)
        else:
            if sid <= self._start.segment_id or self._start == Position(0, 0):
                return None
            since = self._start
        resume = Position(sid, HEADER_SIZE)
        return RecordsDeletedError(
            f"records from {since} up to {resume} were deleted (GC) before this reader read them "
            f"(segments up to {predecessor} are gone) in {self.dir}; open it with on_gap='skip' to skip them",
            since,
            resume,
        )

    def _durable_end(self, sid: int) -> int | None:
        """Where reading segment ``sid`` must stop for ``durable_only`` (None: nowhere before its end)."""
        if self._mark is None:
            return None
        mark = self._mark.read()
        if mark is None or sid > mark.segment_id:
            return 0  # nothing known durable here yet
        return mark.offset if sid == mark.segment_id else None

    def _read(self, size: int, start: int) -> bytes:
        """Up to ``size`` bytes of the current segment from ``start``, never past the durable mark."""
        assert self._fh is not None and self._seg is not None
        end = self._durable_end(self._seg)
        if end is not None:
            size = min(size, end - start)
            if size <= 0:
                return b""
        return self._fh.pread(size, start)

    def _refill(self, i: int) -> bool:
        """Read the current segment again from ``_buf[i]`` on; False if nothing there changed or grew.

        The bytes after the last whole frame are read again rather than kept: a writer
        killed mid-write leaves a torn frame there, and the next writer's recovery cuts
        it and writes new frames in its place (found by the SIGKILL torture). Bad bytes
        are read again before they are called corruption too: over the durable zeros a
        writer preallocates, the file size no longer hides a write in progress, so a read
        can catch a frame half-copied; only bytes that stay the same are damage (also
        found by the torture).
        """
        assert self._fh is not None
        start = self._base + i
        rest = self._buf[i:]
        # The same size each time, not the rest plus READ_SIZE: malloc then reuses the last buffer's memory
        # instead of mapping fresh pages (a page fault every 4 KiB read cost ~0.3 us per 1 KB record).
        need = READ_SIZE if 2 * len(rest) <= READ_SIZE else len(rest) + READ_SIZE
        lay = parse_header(rest, 0, len(rest))
        if type(lay) is tuple:
            want = min(lay[4], self._limit)
            if want > need:
                # Lengths are untrusted: never ask for more than the file holds (os.pread
                # allocates what it is asked for; etcd #14098 allocated 13 PB this way).
                need = max(need, min(want, self._file_size() - start))
        data = self._read(need, start)
        self._base, self._buf, self._i = start, data, 0
        return len(data) > len(rest) or data != rest

    def _next_segment(self, after_seal: bool) -> bool:
        """Move to the segment after the current one; False if there is none yet.

        Stopped at bytes that are not a whole record (``after_seal`` False) in a
        sealed segment -- one with a successor, or one ending with a seal past the
        stop (a last segment closed cleanly) -- that is damage, not the end. But the
        writer seals only after its records are written and fsynced (and before it
        creates the next segment): a frame read mid-write is whole by the time the
        seal is seen, so the bytes are read once more before they are called damage.
        """
        later = [s for s in self._ids() if s > self._seg]  # type: ignore[operator]
        mark_here = self._durable_end(self._seg) is not None  # type: ignore[arg-type]
        if after_seal:
            self._check_after_seal(not later)
        if not after_seal and ((later and not mark_here) or self._sealed_past(self._base + self._i)):
            if self._refill(self._i):
                return True
            if self._i < len(self._buf):
                raise self._corrupt(self._i, self._damage_under_seal(self._i))
        if not later or mark_here:
            return False  # none yet, or the durable mark has not left this segment
        return self._open_segment(later, HEADER_SIZE)

    def _check_after_seal(self, last: bool) -> None:
        """Raise if bytes follow the seal at ``_buf[_i]`` (zeros in the last segment: a crash before the cut).

        The writer never writes after a seal, and cuts its preallocated zeros before
        it creates the next segment (listed before the size is read here).
        """
        assert self._fh is not None
        res = decode_record(self._buf, self._i)
        if not isinstance(res, Seal):
            return
        start = self._base + res.end
        size = self._fh.size()
        if size > start:
            verdict = classify_tail(ScanResult(start, 0, Stop.SEALED, res), size, reader_of(self._fh), last=last)
            if verdict.corruption:
                raise self._corrupt(res.end, verdict.reason)

    def _sealed_past(self, offset: int) -> bool:
        """Whether the current segment ends with a valid seal vouching for records past ``offset``."""
        assert self._fh is not None
        seal = read_seal(self._fh, self._fh.size())
        return seal is not None and seal.data_end > offset

    def _damage_under_seal(self, i: int) -> str:
        """What the bytes at ``_buf[i]``, in a sealed segment, are instead of a record."""
        buf = self._buf
        if not any(buf[i : i + MIN_FRAME_SIZE]):
            return "zero-filled bytes inside a sealed segment"
        lay = frame_layout(buf, i, len(buf), self._limit)
        if lay == NEED_MORE:
            return "record runs past the end of a sealed segment"
        if type(lay) is tuple:
            return "checksum mismatch inside a sealed segment"
        return "invalid frame (bad lengths or flags) inside a sealed segment"


def open_reader(
    directory: str | os.PathLike[str],
    start: Position = Position(0, 0),
    *,
    follow: bool = False,
    durable_only: bool = False,
    on_gap: str = "raise",
) -> WalReader:
    """A reader over the log in ``directory`` from ``start`` (Position(0, 0): the oldest record).

    Raises WalIOError (a FileNotFoundError chained) when ``directory`` does not exist.
    With ``follow=True`` iteration waits for new records instead of ending.
    With ``durable_only=True`` it yields only records the writer has fsynced
    (see the module docstring). Records GC deleted before the reader got to them
    raise RecordsDeletedError naming the gap, unless ``on_gap="skip"``.
    """
    return WalReader(directory, start, follow=follow, durable_only=durable_only, on_gap=on_gap)
