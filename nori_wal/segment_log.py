"""SegmentLog: the on-disk log as a run of segment files: append groups, roll, sync, GC.

This is the one place that turns frames into durable bytes; the embedded Wal
and the writer process are both thin shells over it.

Threading: appends, rolls, GC and close come from one thread at a time (the
caller serialises them); ``sync`` may run in another thread at the same time,
so the next group's write overlaps the current fsync (``os.fdatasync``
releases the GIL). A roll waits for an fsync in flight on the old file.

Fail-stop: after a failed write or fsync every later call raises the same
WalIOError (original OSError as ``__cause__``) until the log is reopened and
recovered. After a failed fsync Linux may drop the dirty pages, so a retry
could "succeed" without the data (PostgreSQL fsyncgate, 2018). So does a
write interrupted between the bytes and their bookkeeping (a KeyboardInterrupt):
where the file ends is no longer known.

Fork: a forked child (a ``multiprocessing`` fork pool) inherits the open log
but is not its writer: two processes appending at their own copies of ``end``
would overwrite each other's records. In the child the log is closed at once
(an at-fork hook drops its copies of the descriptors and of the directory
lock, touching nothing of the parent's); appends, syncs and GC there raise
WalClosedError saying so (a reader opens its own files: ``Wal.read_from``
still works). Share a log between processes through the writer process, or
open it in the child.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Callable, Sequence

from .codec import FORMAT_MAX_FRAME, SEAL_FRAME_SIZE, encode_seal
from .config import WalConfig
from .cursor import Expiry
from .cursor_store import cursor_names, read_cursor, read_expiry, write_expiry
from .durable_mark import MarkPublisher
from .errors import CorruptionError, PositionPastEndError, RecordTooLargeError, WalClosedError, WalError, WalIOError
from .fs import OS, DirLock, FileHandle, FileLayer, OsFileLayer, make_dirs_durable, secure_dir
from .observe import NOOP, Fsync, FsyncFailed, Meter, SegmentRoll, SegmentsDeleted, guard_meter
from .position import Position, make_position
from .record import BytesLike
from .recovery import RecoveryInfo, recover
from .retention import GcPlan, Hold, plan_gc
from .segment import HEADER_SIZE, TMP_SUFFIX, encode_header, max_frame_size, segment_name

SLOW_FSYNC_WARN_S = 1.0  # etcd warns about fsyncs slower than a second
PREALLOC_BYTES = 2 * 1024 * 1024  # durable zeros kept ahead of the write point (fsyncing policies)
PREALLOC_MAX_WRITE = 32 * 1024  # ... for small writes only: large groups would write every byte twice
WRITEBACK_BYTES = 8 * 1024 * 1024  # Os: ask the kernel to start writing back after this many bytes
_log = logging.getLogger(__name__)
_OPEN_LOGS: weakref.WeakSet[SegmentLog] = weakref.WeakSet()


class SegmentLog:
    """Appends framed records to the active segment of one directory it has locked."""

    def __init__(self, layer: FileLayer, directory: str, config: WalConfig, meter: Meter, lock: DirLock):
        self.layer, self.dir, self.config, self.meter = layer, directory, config, meter
        self._lock: DirLock | None = lock
        self.max_frame = max_frame_size(config.max_segment_size)
        self._roll_at = config.max_segment_size - SEAL_FRAME_SIZE
        self._io_lock = threading.Lock()  # a roll never closes a file an fsync is using
        self._active: FileHandle | None = None
        self.segment_ids: list[int] = []
        self.active_id = 0
        self.end = HEADER_SIZE  # offset where the next record goes
        self._active_records = 0
        self._zeroed_to = 0  # the active file holds durable zeros up to here
        self._has_zeros = False  # ... that must be cut off when it is sealed
        self._written_back = HEADER_SIZE  # Os: writeback of the active file was started up to here
        self.total_records = 0
        self.writes = 0  # group writes since open (one per segment touched) ...
        self.fsyncs = 0  # ... and fsyncs (records per fsync: how well commits group)
        self._durable = Position(0, 0)  # everything before this is fsynced
        self._mark: MarkPublisher | None = None  # publishes ``durable`` for readers (real files only)
        self._next_id = 0
        self._failed: WalError | None = None
        self._pid = os.getpid()
        self.disowned = False  # this process is a fork of the one that opened the log
        # Called as (segment id, data_end, record count) once a segment's records are durable and
        # before its seal is written (the dedupe key file, dedupe_files Rule 1); OSError fail-stops.
        self.before_seal: Callable[[int, int, int], None] | None = None
        self.last_gc: GcPlan | None = None  # what the last delete_segments_before did, and what held it back
        _OPEN_LOGS.add(self)

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, config: WalConfig, layer: FileLayer = OS, meter: Meter = NOOP) -> tuple["SegmentLog", RecoveryInfo]:
        """Lock ``config.dir`` (creating it), recover it, and get ready to append.

        ``meter`` is guarded: one that raises is dropped, never raised into the log (``observe``).
        """
        directory = os.fspath(config.dir)
        meter = guard_meter(meter)
        try:
            make_dirs_durable(layer, directory)
            lock = layer.lock_dir(directory)
            if isinstance(layer, OsFileLayer):
                try:
                    secure_dir(directory, config.group)  # owner-only (or the group's), whatever the umask
                except BaseException:
                    lock.release()
                    raise
        except WalError:  # already says what failed (a WalIOError is an OSError too)
            raise
        except OSError as exc:  # only WalError subclasses cross the public API
            raise WalIOError(f"opening {directory} failed: {exc.strerror or exc}") from exc
        mark = None
        try:
            if isinstance(layer, OsFileLayer):
                mark = MarkPublisher(directory)
            log = cls(layer, directory, config, meter, lock)
            log._mark = mark
            # Frames this config could not write are still records: an earlier open may have had
            # larger segments (the limit here is the format's; max_frame bounds new appends only).
            state, info = recover(layer, directory, FORMAT_MAX_FRAME, meter)
            log.segment_ids = state.segment_ids
            log._next_id = state.next_segment_id
            log.total_records = state.total_records
            if not state.segment_ids:
                log._create_segment()
            else:
                log.active_id = state.segment_ids[-1]
                log.end = state.active_end
                log._active_records = state.active_records
                if not state.active_sealed:  # a sealed last segment rolls at the next append
                    log._active = layer.open_append(os.path.join(directory, segment_name(log.active_id)))
                if state.next_segment_id > log.active_id + 1:
                    # Recovery removed later segments: put the next id on disk now, or a
                    # reopen would create a segment under a removed one's name (rule 8).
                    try:
                        log._roll()
                    except BaseException:
                        if log._active is not None:
                            log._active.close()
                        raise
            log.durable = log.position  # recovery made everything durable: published before any append
            meter.gauge("wal_segment_count", len(log.segment_ids))
        except BaseException as exc:
            if mark is not None:
                mark.close()
            lock.release()
            if isinstance(exc, OSError) and not isinstance(exc, WalError):
                raise WalIOError(
                    f"recovering {directory} failed: {exc.strerror or exc}; open it again to retry"
                ) from exc
            raise
        return log, info

    # -- appending -------------------------------------------------------------------------

    @property
    def position(self) -> Position:
        """Where the next record goes (before a roll the next append may need)."""
        return Position(self.active_id, self.end)

    @property
    def durable(self) -> Position:
        """Everything before this position is fsynced."""
        return self._durable

    @durable.setter
    def durable(self, position: Position) -> None:
        self._durable = position
        if self._mark is not None:
            self._mark.publish(position)  # for readers of durable records only (durable_mark.py)

    def check_usable(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._lock is None:
            raise WalClosedError(f"the log in {self.dir} is closed")

    def check_sizes(self, frames: Sequence[BytesLike]) -> None:
        """Raise RecordTooLargeError if any unit cannot fit in one segment (before anything is written)."""
        for f in frames:
            if len(f) > self.max_frame:
                raise RecordTooLargeError(
                    f"record frame of {len(f)} bytes exceeds the {self.max_frame} bytes a segment of "
                    f"{self.config.max_segment_size} bytes can hold"
                )

    def append_frames(self, frames: Sequence[BytesLike], counts: Sequence[int] | None = None) -> list[Position]:
        """Write already-validated units in order, one write per segment touched; no fsync.

        Each unit is one frame, or several whole frames back to back (``counts[i]``
        records; default 1): a unit never spans two segments. Returns the position
        of each unit's first record.
        """
        self.check_usable()
        self.check_sizes(frames)
        positions: list[Position] = []
        end = self.end
        pending: list[BytesLike] = []
        records = 0
        for i, f in enumerate(frames):
            size = len(f)
            if self._active is None or end + size > self._roll_at:
                if pending:
                    self._write(pending, end, records)
                    pending, records = [], 0
                self._roll()
                end = self.end
            positions.append(make_position((self.active_id, end)))
            end += size
            pending.append(f)
            records += 1 if counts is None else counts[i]
        if pending:
            self._write(pending, end, records)
        return positions

    def append_in_place(self, units: list[BytesLike], records: int, nbytes: int) -> int | None:
        """Write units with one write if all ``nbytes`` of them fit in the active segment; no fsync.

        Returns the offset of the first unit (each next one follows the last),
        or None, writing nothing, when a roll is needed (then ``append_frames``).
        The writer's per-group path: no Position per unit. The caller vouches
        that every unit is whole frames of at most ``max_frame`` bytes.
        """
        self.check_usable()
        start = self.end
        if self._active is None or start + nbytes > self._roll_at:
            return None
        self._write(units, start + nbytes, records)
        return start

    def _write(self, frames: list[BytesLike], new_end: int, count: int) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        assert self._active is not None
        if new_end > self._zeroed_to and len(data) < PREALLOC_MAX_WRITE:
            self._preallocate(new_end)
        try:
            self._active.append(data)
            self.end = new_end
        except OSError as exc:
            # Cut back whatever part of the group reached the file, then stop for good.
            try:
                self._active.truncate(self.end)
            except OSError:
                pass
            raise self._fail(
                f"write of {len(data)} bytes to segment {self.active_id} at offset {self.end} failed", exc
            ) from exc
        except BaseException as exc:
            # An asynchronous exception (KeyboardInterrupt) between the write and ``end``: the file
            # may end past ``end``, so the next record's Position would not be where its bytes go.
            self._failed = WalIOError(
                f"a write to segment {self.active_id} at offset {self.end} was interrupted "
                f"({type(exc).__name__}); the log stopped acknowledging (fail-stop) and "
                f"recovers when reopened"
            )
            raise
        self.writes += 1
        if new_end - self._written_back >= WRITEBACK_BYTES and self.config.fsync_policy.kind == "os":
            self._start_writeback(new_end)
        self._active_records += count
        self.total_records += count
        self.meter.counter("wal_records_total", count)
        self.meter.counter("wal_bytes_total", len(data))

    def _start_writeback(self, new_end: int) -> None:
        """Os: have the kernel start writing the active segment's dirty bytes (a hint; see ``OsFile``).

        The WAL never fsyncs for an Os ack; but without this the whole 128 MiB of
        a segment is still dirty when its seal is fsynced at a roll, which stalled
        every producer for 45-60 ms here.
        """
        start = getattr(self._active, "start_writeback", None)
        if start is not None:
            start(self._written_back, new_end - self._written_back)
        self._written_back = new_end

    def _preallocate(self, new_end: int) -> None:
        """Keep durable zeros ahead of the write point, where the layer can and fsyncs pay.

        Overwriting them, an fdatasync need not commit a new file size (see
        ``OsFile.preallocate``): it pays for small, frequent groups (synchronous
        producers), not for large ones, which would write every byte twice.
        Recovery and readers already read zeros as "end of what was written";
        the seal cuts them off (``_seal``).
        """
        prealloc = getattr(self._active, "preallocate", None)
        if prealloc is None or self.config.fsync_policy.kind == "os":
            self._zeroed_to = self._roll_at  # nothing to gain: never ask again for this file
            return
        upto = min(self._roll_at, new_end + PREALLOC_BYTES)
        try:
            prealloc(upto)
        except OSError as exc:
            raise self._fail(f"preallocating segment {self.active_id} failed", exc) from exc
        self._zeroed_to = upto
        self._has_zeros = True

    def _seal(self, handle: FileHandle) -> None:
        """Make the records durable, then append the seal after them, cut any preallocated zeros, fsync.

        The records' fsync comes first because recovery trusts a seal without
        rescanning its segment, and a disk may write back out of order: a seal
        that reached the disk before the records it counts would vouch for
        zeros (found by FaultFS's out-of-order crash states).
        """
        if self.durable < Position(self.active_id, self.end):
            self._fsync(handle)
            self.durable = Position(self.active_id, self.end)
        if self.before_seal is not None:
            try:
                self.before_seal(self.active_id, self.end, self._active_records)
            except OSError as exc:
                raise self._fail(
                    f"writing the key file of segment {self.active_id} before its seal failed", exc
                ) from exc
        sealed_end = self.end + SEAL_FRAME_SIZE
        try:
            handle.append(encode_seal(self._active_records, self.end))
            if self._has_zeros:
                handle.truncate(sealed_end)  # the seal must end the file (recovery reads it there)
        except OSError as exc:
            raise self._fail(f"sealing segment {self.active_id} failed", exc) from exc
        self._fsync(handle)

    def sync(self) -> Position:
        """fdatasync the active segment; returns the position everything before is durable to."""
        with self._io_lock:
            self.check_usable()
            target = Position(self.active_id, self.end)
            if self._active is None or target <= self.durable:
                return self.durable
            self._fsync(self._active)
            if target > self.durable:
                self.durable = target
            return target

    def _fsync(self, handle: FileHandle) -> None:
        t0 = time.perf_counter()
        try:
            handle.sync()
        except OSError as exc:
            err = self._fail(f"fsync of segment {self.active_id} failed", exc)
            self._cut_to_durable(handle)
            raise err from exc
        self.fsyncs += 1
        ms = (time.perf_counter() - t0) * 1e3
        self.meter.histogram("wal_fsync_ms", ms)
        self.meter.event(Fsync(ms))
        if ms > SLOW_FSYNC_WARN_S * 1e3:
            _log.warning("slow fsync: %.0f ms on segment %d in %s", ms, self.active_id, self.dir)

    def _cut_to_durable(self, handle: FileHandle) -> None:
        """After a failed fsync, cut off what it was to make durable (best effort; the log has stopped).

        Linux may have dropped those pages while they still read back (fsyncgate):
        left in the file, a restart on the same kernel would recover them from the
        page cache and append after them, and a power loss would then cut off the
        records acknowledged after the restart too. Under Always and Batch nothing
        past ``durable`` was acknowledged; under Os it was (at the write): it stays.
        """
        if self.config.fsync_policy.kind == "os" or self.durable.segment_id != self.active_id:
            return
        try:
            handle.truncate(self.durable.offset)
        except OSError:
            pass  # recovery cuts at the first bytes that are not whole records

    def _fail(self, what: str, exc: OSError) -> WalIOError:
        err = WalIOError(
            f"{self.dir}: {what}: {exc.strerror or exc}; the log stopped acknowledging (fail-stop) "
            f"and recovers when reopened"
        )
        err.filename = exc.filename or self.dir  # a descriptor's error names no file: name the log
        err.__cause__ = exc
        self._failed = err
        self.meter.event(FsyncFailed(str(err)))
        self.meter.counter("wal_io_failures_total", 1)
        return err

    # -- segments --------------------------------------------------------------------------

    def _roll(self) -> None:
        """Seal the active segment (fsynced) and create the next one."""
        with self._io_lock:
            old = self._active
            if old is not None:
                sealed_bytes = self.end + SEAL_FRAME_SIZE
                self._seal(old)
                self._active = None
                old.close()
                self.meter.event(SegmentRoll(self.active_id, sealed_bytes, self._next_id))
                _log.info(
                    "sealed segment %d at %d bytes (%d records); rolling to segment %d in %s",
                    self.active_id,
                    sealed_bytes,
                    self._active_records,
                    self._next_id,
                    self.dir,
                )
                self.meter.counter("wal_segment_rolls_total", 1)
            self._create_segment()

    def _create_segment(self) -> None:
        """Create the next segment durably: tmp file, header, fsync, rename, fsync the directory.

        A crash at any point leaves either no new segment or a complete one
        (etcd #6368 and KAFKA-3968 lost segments by skipping the directory fsync).
        """
        sid = self._next_id
        final = os.path.join(self.dir, segment_name(sid))
        tmp = final[: -len(".wal")] + TMP_SUFFIX
        try:
            handle = self.layer.create(tmp)
            try:
                predecessor = self.segment_ids[-1] if self.segment_ids else None
                handle.append(encode_header(sid, self.config.node_id, predecessor))
                handle.sync()
                self.layer.rename(tmp, final)
                self.layer.sync_dir(self.dir)
            except BaseException:
                handle.close()
                raise
        except OSError as exc:
            raise self._fail(f"creating segment {sid} failed", exc) from exc
        self._next_id = sid + 1
        self._active = handle
        self.active_id = sid
        self.end = HEADER_SIZE
        self._active_records = 0
        self._zeroed_to, self._has_zeros = 0, False
        self._written_back = HEADER_SIZE
        self.segment_ids.append(sid)
        self.durable = max(self.durable, Position(sid, HEADER_SIZE))
        self.meter.gauge("wal_segment_count", len(self.segment_ids))

    def delete_segments_before(self, position: Position) -> int:
        """Delete segments wholly before ``position``, never the active one nor one a consumer still needs.

        Oldest first, the directory fsynced after each unlink: a crash leaves a
        suffix of the log, never a hole (the segment module's Rule 2), so a hole
        found later is a lost segment. A failed directory fsync is fail-stop like
        any other (whether that unlink, or an earlier one, is durable is unknown).

        Consumers' cursors hold segments back (``retention``): what was kept, and
        by whom, is logged as a warning and left in ``last_gc`` (a ``GcPlan``);
        past ``config.max_retained_bytes`` the lagging cursors are expired,
        durably, before their segments go.
        """
        self.check_usable()
        if position > self.position:  # a typo (99999:0) must not empty the log
            raise PositionPastEndError(
                f"cannot delete segments before {position}: it is past the end of the log in {self.dir} "
                f"(the end is {self.position}); nothing was deleted"
            )
        t0 = time.perf_counter()
        plan = self._plan_gc(position)
        self.last_gc = plan
        note = plan.describe(position)
        if note:
            _log.warning("%s (%s)", note, self.dir)
        for expired in plan.expire:
            write_expiry(
                self.layer, self.dir, Expiry(expired.name, expired.lost_from, expired.resumes_at, time.time_ns())
            )
        victims = plan.delete
        deleted = 0
        try:
            for sid in victims:
                try:
                    self.layer.unlink(os.path.join(self.dir, segment_name(sid)))
                except FileNotFoundError:
                    pass  # removed by hand: gone as GC wanted
                except OSError as exc:
                    raise WalIOError(
                        f"deleting segment {sid} (GC before {position}) failed: {exc.strerror or exc}"
                    ) from exc
                self.segment_ids.remove(sid)
                deleted += 1
                try:
                    self.layer.sync_dir(self.dir)
                except OSError as exc:
                    raise self._fail(f"fsync of {self.dir} after deleting segment {sid} failed", exc) from exc
        finally:  # also after a failure part way: report the segments that are gone
            ms = (time.perf_counter() - t0) * 1e3
            self.meter.counter("wal_segments_deleted_total", deleted)
            self.meter.histogram("wal_gc_latency_ms", ms)
            self.meter.gauge("wal_segment_count", len(self.segment_ids))
            self.meter.event(SegmentsDeleted(deleted, position.segment_id, ms))
            _log.log(
                logging.INFO if deleted else logging.DEBUG,
                "GC deleted %d segments before %s in %.1f ms; %d remain in %s",
                deleted,
                position,
                ms,
                len(self.segment_ids),
                self.dir,
            )
        return deleted

    def _plan_gc(self, position: Position) -> GcPlan:
        """What a GC before ``position`` may delete, given the cursors on disk now (``retention``)."""
        holds = []
        for name in cursor_names(self.layer, self.dir):
            try:
                if read_expiry(self.layer, self.dir, name) is not None:
                    continue  # expired: holds nothing
            except CorruptionError:
                continue  # a damaged expiry file still says it was expired
            try:
                state = read_cursor(self.layer, self.dir, name)
            except CorruptionError:
                holds.append(Hold(name, Position(0, 0)))  # unknown position: holds everything (retention Rule 4)
                continue
            if state is not None:
                holds.append(Hold(name, state.next))
        cap = self.config.max_retained_bytes
        segments = [(sid, 0) for sid in self.segment_ids]
        if cap is not None and holds:
            segments = [(sid, self._segment_size(sid)) for sid in self.segment_ids]
        return plan_gc(segments, position, holds, cap)

    def _segment_size(self, sid: int) -> int:
        if sid == self.active_id:
            return self.end  # not the preallocated zeros past it
        try:
            fh = self.layer.open_read(os.path.join(self.dir, segment_name(sid)))
        except FileNotFoundError:
            return 0
        try:
            return fh.size()
        finally:
            fh.close()

    # -- closing ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._lock is None

    @property
    def failed(self) -> WalError | None:
        return self._failed

    def _disown(self) -> None:
        """In a forked child: close this process's copies of the parent's descriptors (module docstring)."""
        self._io_lock = threading.Lock()  # the parent's may have been held by another thread
        if self._lock is None:
            return
        self._failed = WalClosedError(
            f"the log in {self.dir} was opened by process {self._pid}, and this process is a fork of it: a "
            f"forked child cannot append to it (two writers would overwrite each other's records). Share the "
            f"log through a writer process (nori_wal.writer_proc), or open it in the child once the parent "
            f"has closed it"
        )
        self._close_files()
        self.disowned = True
        self._lock = None  # the lock's own at-fork hook (fs.OsDirLock) closed the child's copy

    def close(self) -> None:
        """Seal and fsync the active segment (a clean close), release the lock. Idempotent."""
        if self._lock is None:
            return
        try:
            with self._io_lock:
                if self._active is not None and self._failed is None:
                    self._seal(self._active)
                    self.durable = max(self.durable, self.position)
        finally:
            with self._io_lock:
                self._close_files()
            lock, self._lock = self._lock, None
            lock.release()

    def _close_files(self) -> None:
        """Close the active segment's handle and the durable mark's mapping (not the lock)."""
        if self._active is not None:
            self._active.close()
            self._active = None
        if self._mark is not None:
            self._mark.close()
            self._mark = None


def _disown_in_child() -> None:
    for log in list(_OPEN_LOGS):
        log._disown()


os.register_at_fork(after_in_child=_disown_in_child)
