"""Wal: the embedded, thread-safe log for one process.

Appends from many threads share fsyncs (group commit, as okaywal does it):
a thread whose bytes are already synced returns; one whose bytes are not
waits for the fsync in flight or becomes the syncer itself, and syncs outside
the write lock so other threads keep writing meanwhile.

A forked child cannot append to its parent's Wal (``segment_log``: appends,
syncs and GC there raise WalClosedError; ``read_from`` still works, and
``close`` does nothing); its locks are renewed in the child so that no call
there blocks on a lock a parent thread held at the fork.

Exactly-once: a record with an idempotency key whose key the log holds
within ``WalConfig.dedupe_window`` is not written again; its append returns
the original Position (``append_ex`` also says it was a duplicate). The
index (``dedupe``) is rebuilt at open from key files and the log
(``dedupe_files``), and each segment's key file is made durable before its seal.
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import time
import weakref
from typing import Iterable, Sequence, cast

from .codec import encode_record
from .commit import fsync_due_at, needs_fsync
from .config import WalConfig
from .dedupe import AppendResult, KeyRun, auto_count, index_for, is_auto_key
from .dedupe_files import RebuildInfo, rebuild_index, remove_stale_key_files, write_key_file
from .errors import WalClosedError, WalError, WalIOError
from .fs import OS, FileLayer
from .observe import NOOP, Meter
from .position import Position, make_position
from .reader import WalReader
from .record import Record
from .recovery import RecoveryInfo
from .retention import GcPlan
from .segment_log import SegmentLog


class Wal:
    """The embedded log of one process. Open one with ``Wal.open``::

        wal, info = Wal.open(WalConfig("wal"))      # creates the directory, takes its lock, recovers
        pos = wal.append(Record.put(b"k", b"v"))    # durable per the fsync policy when it returns
        for record, position in wal.read_from(pos): ...
        wal.close()                                 # or use it as a context manager

    Thread-safe; appends from many threads share fsyncs. Owns its directory's lock:
    a second Wal or writer process on the same directory raises WalLockedError.
    """

    __signature__ = inspect.Signature()  # help(Wal) shows the docstring above, not "Wal() -> None"

    def __init__(self) -> None:
        """Not a way in: ``Wal.open(config)`` opens a log (``Wal()`` raises TypeError saying so)."""
        raise TypeError("open a log with Wal.open(WalConfig(dir)), which returns (wal, recovery_info)")

    @classmethod
    def _attach(cls, log: SegmentLog, meter: Meter) -> "Wal":
        """The Wal over an opened SegmentLog (what ``open`` returns; ``Wal(...)`` is not a way in)."""
        self = cls.__new__(cls)
        self._setup(log, meter)
        return self

    def _setup(self, log: SegmentLog, meter: Meter) -> None:
        self._log = log
        self._meter = meter
        self.config = log.config
        self._policy = log.config.fsync_policy
        self._last_fsync = float("-inf")
        self._dedupe = index_for(log.config)
        self.dedupe_rebuild = RebuildInfo(0, 0, 0, 0)  # what the open's rebuild of the index read
        self._new_locks()
        _OPEN_WALS.add(self)

    def _new_locks(self) -> None:
        """Fresh locks (at open, and in a forked child: the parent's may be held by its other threads)."""
        self._write_lock = threading.Lock()
        self._sync_cond = threading.Condition(threading.Lock())
        self._syncing = False

    @classmethod
    def open(cls, config: WalConfig, *, layer: FileLayer = OS) -> tuple["Wal", RecoveryInfo]:
        """Open (creating if needed) and recover the log in ``config.dir``.

        Raises WalLockedError at once if another writer owns the directory and
        CorruptionError if a sealed segment is damaged.
        """
        return cls.open_with_meter(config, NOOP, layer=layer)

    @classmethod
    def open_with_meter(cls, config: WalConfig, meter: Meter, *, layer: FileLayer = OS) -> tuple["Wal", RecoveryInfo]:
        """``open``, reporting metrics and events to ``meter``."""
        log, info = SegmentLog.open(config, layer, meter)
        try:
            wal = cls._attach(log, meter)
            wal.dedupe_rebuild = rebuild_index(layer, log.dir, list(log.segment_ids), wal._dedupe, _now_ms())
        except BaseException as exc:
            log.close()
            if isinstance(exc, OSError):
                raise WalIOError(f"rebuilding the dedupe index of {log.dir} failed: {exc.strerror or exc}") from exc
            raise
        log.before_seal = wal._write_key_file
        return wal, info

    def _write_key_file(self, segment_id: int, data_end: int, record_count: int) -> None:
        """The seal hook: this segment's keys, durable before its seal (dedupe_files Rule 1)."""
        write_key_file(self._log.layer, self._log.dir, segment_id, data_end, record_count, self._dedupe)

    # -- writing ---------------------------------------------------------------------------

    def append(self, record: Record) -> Position:
        """Append one record; returns once it is as durable as the fsync policy promises.

        An exception raised inside the write itself (a KeyboardInterrupt) stops the
        log until it is reopened (fail-stop, see ``segment_log``).
        """
        frame = encode_record(record)
        if record.idempotency_key is not None:
            return self._append_keyed(record.idempotency_key, frame).position
        with self._write_lock:
            pos = self._log.append_frames((frame,))[0]
            end = self._log.position
        self._await_durable(end)
        return pos

    def append_ex(self, record: Record) -> AppendResult:
        """``append``, also saying whether the record's key was already in the log (nothing written)."""
        frame = encode_record(record)
        if record.idempotency_key is not None:
            return self._append_keyed(record.idempotency_key, frame)
        with self._write_lock:
            pos = self._log.append_frames((frame,))[0]
            end = self._log.position
        self._await_durable(end)
        return AppendResult(pos, False)

    def _append_keyed(self, key: bytes, frame: bytes) -> AppendResult:
        """Append a keyed frame unless its key is remembered; a duplicate waits for the original's fsync."""
        with self._write_lock:
            now = _now_ms()
            pos = self._dedupe.lookup(key, now)
            duplicate = pos is not None
            if pos is not None:
                self._log.check_usable()
            else:
                self._dedupe.check_room(1, now, int(is_auto_key(key)))
                pos = self._log.append_frames((frame,))[0]
                self._dedupe.add(key, pos, now, check=False)
            end = self._log.position  # a duplicate's original may still await its fsync: so it waits too
        self._await_durable(end)
        return AppendResult(pos, duplicate)

    def append_batch(self, records: Iterable[Record]) -> list[Position]:
        """Append records in order with one write and one shared fsync.

        A batch that fits in one segment is one unit, written with one write
        after any roll it needs: a failed roll or write leaves none of it. A
        batch larger than a segment is written across segments; if it fails
        part way, the records before the failure may be in the log. (As for any
        write not yet acknowledged, a crash may leave a prefix of a batch.)
        Keyed records are judged one by one (``append_batch_ex``).
        """
        records = list(records)
        frames = list(map(encode_record, records))
        keys = [r[5] for r in records]  # (idempotency_key)
        if keys and (keys[0] is not None or keys.count(None) != len(keys)):
            return self._append_batch_keyed(records, frames, keys)[0]
        with self._write_lock:
            if not frames:
                self._log.check_usable()
                return []
            positions = self._write_frames(frames)
            end = self._log.position
        self._await_durable(end)
        return positions

    def append_batch_ex(self, records: Iterable[Record]) -> list[AppendResult]:
        """``append_batch``, also saying per record whether it was a duplicate (nothing written for it).

        A keyed record is a duplicate if its key is in the log within the dedupe
        window, or earlier in this batch (then it gets that record's position).
        """
        records = list(records)
        positions, dups = self._append_batch_keyed(records, list(map(encode_record, records)), [r[5] for r in records])
        return [AppendResult(p, i in dups) for i, p in enumerate(positions)]

    def _append_batch_keyed(
        self, records: list[Record], frames: list[bytes], keys: list[bytes | None]
    ) -> tuple[list[Position], frozenset[int]]:
        """Append a batch holding keyed records: every record's Position and the indexes of the duplicates.

        The common batch (every record keyed, its keys distinct bytes, none
        held, all of it one unit) has its keys reserved in the index in one
        step, is written as an unkeyed one, and its keys placed; any other goes
        record by record (``_plan_keyed``).
        """
        offsets = list(itertools.accumulate(map(len, frames[:-1]), initial=0))  # from the batch's start
        with self._write_lock:
            now = _now_ms()
            runs = self._reserve(keys, frames, offsets, now)
            if runs is not None:
                try:
                    seg, first = self._log.append_frames((b"".join(frames),), (len(frames),))[0]
                except BaseException:
                    self._dedupe.release(runs)
                    raise
                self._dedupe.place(runs, seg, first)
                end = self._log.position
                positions, dups = [make_position((seg, first + off)) for off in offsets], frozenset[int]()
            else:
                positions, dups = self._plan_keyed(records, frames, now)
                end = self._log.position
        self._await_durable(end)
        return positions, dups

    def _reserve(
        self, keys: list[bytes | None], frames: list[bytes], offsets: list[int], now: int
    ) -> list[KeyRun] | None:
        """The batch's keys reserved in the index if the batch takes the fast path, else None (under the lock).

        Raises DedupeCapacityError (nothing reserved) when they do not fit.
        """
        if None in keys or type(keys[0]) is not bytes or sum(map(len, frames)) > self._log.max_frame:
            return None
        try:
            return self._dedupe.reserve_new(cast(list[bytes], keys), offsets, now)
        except (TypeError, ValueError):  # keys of another type (a Record made unchecked)
            return None

    def _plan_keyed(
        self, records: list[Record], frames: list[bytes], now: int
    ) -> tuple[list[Position], frozenset[int]]:
        """A keyed batch record by record (under the write lock): duplicates of the log or of an earlier
        record of the batch are not written."""
        # Per record: a Position (a duplicate of the log), an int (the index of this batch's first
        # record with that key), or None (written).
        plan: list[Position | int | None] = []
        first: dict[bytes, int] = {}
        for i, r in enumerate(records):
            key = r.idempotency_key
            if key is not None:
                key = bytes(key)
                if key in first:
                    plan.append(first[key])
                    continue
                pos = self._dedupe.lookup(key, now)
                if pos is not None:
                    plan.append(pos)
                    continue
                first[key] = i
            plan.append(None)
        self._dedupe.check_room(len(first), now, auto_count(list(first)))
        todo = [i for i, p in enumerate(plan) if p is None]
        written = dict(zip(todo, self._write_keyed_units(todo, records, frames, now)))
        if not todo:
            self._log.check_usable()
        positions = [written[i] if p is None else written[p] if isinstance(p, int) else p for i, p in enumerate(plan)]
        return positions, frozenset(i for i, p in enumerate(plan) if p is not None)

    def _write_frames(self, frames: list[bytes]) -> list[Position]:
        """Write frames (under the write lock): one unit when they fit in a segment, else frame by frame."""
        log = self._log
        if len(frames) > 1 and sum(map(len, frames)) <= log.max_frame:
            seg, first = log.append_frames((b"".join(frames),), (len(frames),))[0]
            offsets = itertools.accumulate(map(len, frames[:-1]), initial=first)
            return [make_position((seg, off)) for off in offsets]
        return log.append_frames(frames)

    def _write_keyed_units(
        self, todo: list[int], records: list[Record], frames: list[bytes], now: int
    ) -> list[Position]:
        """Write ``frames[todo]`` and remember their keys, unit by unit (under the write lock).

        A unit is as many frames as fit in one segment. Its keys are added before
        the next unit is written: a roll there seals the segment, and its key
        file must hold them (dedupe_files Rule 1).
        """
        positions: list[Position] = []
        limit = self._log.max_frame
        start, size = 0, 0
        for j, i in enumerate(todo + [-1]):
            n = len(frames[i]) if i >= 0 else limit + 1
            if j > start and (i < 0 or size + n > limit):
                unit = todo[start:j]
                done = self._write_frames([frames[k] for k in unit])
                for k, pos in zip(unit, done):
                    key = records[k].idempotency_key
                    if key is not None:
                        self._dedupe.add(bytes(key), pos, now, check=False)
                positions += done
                start, size = j, 0
            size += n
        return positions

    def append_frames(self, frames: Sequence[bytes]) -> list[Position]:
        """Append frames already encoded by ``codec.encode_record`` (no validation: trusted callers)."""
        with self._write_lock:
            positions = self._log.append_frames(frames)
            end = self._log.position
        self._await_durable(end)
        return positions

    def sync(self) -> None:
        """fsync everything appended so far, whatever the policy."""
        with self._write_lock:
            self._log.check_usable()
            end = self._log.position
        self._await_durable(end, force=True)

    def _await_durable(self, end: Position, force: bool = False) -> None:
        """Block until ``end`` is durable (unless the policy is Os); share fsyncs between threads."""
        if not force and not needs_fsync(self._policy):
            return
        cond = self._sync_cond
        with cond:
            while True:
                if self._log.failed is not None:
                    raise self._log.failed
                if self._log.durable >= end:
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                cond.wait()
        try:
            due = fsync_due_at(self._policy, self._last_fsync, True)
            if not force and due is not None:
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # Batch: at most one fsync per window
            self._last_fsync = time.monotonic()
            try:
                self._log.sync()
            except WalClosedError:
                # close() ran meanwhile: its seal fsync made our bytes durable, unless it failed.
                if self._log.failed is not None or self._log.durable < end:
                    raise
        finally:
            with cond:
                self._syncing = False
                cond.notify_all()
        if self._log.durable < end:  # a roll moved the durable point; loop once more
            self._await_durable(end, force)

    # -- reading, GC, state ------------------------------------------------------------

    def current_position(self) -> Position:
        """Where the next record will go (<= the position the next append returns)."""
        with self._write_lock:  # a roll sets the segment id and the offset in two steps
            return self._log.position

    def read_from(self, position: Position | str, *, durable_only: bool = False, on_gap: str = "raise") -> WalReader:
        """A reader over this log from ``position`` (see ``open_reader``); also in a forked child.

        ``position`` is a Position, its ``"SEG:OFF"`` text or a ``[seg, off]`` pair (``Position.coerce``).
        """
        start = Position.coerce(position)
        if not self._log.disowned:
            self._check_open()
        return WalReader(self._log.dir, start, layer=self._log.layer, durable_only=durable_only, on_gap=on_gap)

    def delete_segments_before(self, position: Position | str) -> int:
        """Delete whole segments before ``position``'s segment; never the active one nor one a consumer needs.

        Returns how many were deleted; ``last_gc`` says what consumers held back or
        what retention expired (also logged as a warning; docs/CONSUMERS.md).
        """
        position = Position.coerce(position)
        with self._write_lock:
            self._check_open()
            try:
                return self._log.delete_segments_before(position)
            finally:
                self._remove_stale_key_files()

    def _remove_stale_key_files(self) -> None:
        """Key files of deleted segments describe nothing: best effort (the next open retries)."""
        try:
            remove_stale_key_files(self._log.layer, self._log.dir, list(self._log.segment_ids))
        except OSError:
            pass

    @property
    def last_gc(self) -> GcPlan | None:
        """The last ``delete_segments_before``'s plan: deleted, ``held_back``, ``held_by`` cursors, ``expire``."""
        return self._log.last_gc

    def _check_open(self) -> None:
        if self._log.closed:
            raise WalClosedError(f"the log in {self._log.dir} is closed")

    @property
    def directory(self) -> str:
        return self._log.dir

    def close(self) -> None:
        """Seal and fsync the active segment and release the directory. Idempotent."""
        with self._write_lock:
            with self._sync_cond:
                while self._syncing:
                    self._sync_cond.wait()
            self._log.close()

    def __enter__(self) -> "Wal":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except WalError:
            if exc[0] is None:
                raise


def _now_ms() -> int:
    """Wall-clock milliseconds: the dedupe window's clock (key times survive restarts)."""
    return time.time_ns() // 1_000_000


_OPEN_WALS: weakref.WeakSet[Wal] = weakref.WeakSet()


def _renew_locks_in_child() -> None:
    for wal in list(_OPEN_WALS):
        wal._new_locks()


os.register_at_fork(after_in_child=_renew_locks_in_child)
