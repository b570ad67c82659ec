"""Wal: the embedded, thread-safe log for one process.

Appends from many threads share fsyncs (group commit, as okaywal does it):
a thread whose bytes are already synced returns; one whose bytes are not
waits for the fsync in flight or becomes the syncer itself, and syncs outside
the write lock so other threads keep writing meanwhile.

A forked child cannot append to its parent's Wal (``segment_log``: appends,
syncs and GC there raise WalClosedError; ``read_from`` still works, and
``close`` does nothing); its locks are renewed in the child so that no call
there blocks on a lock a parent thread held at the fork.
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import time
import weakref
from typing import Iterable, Sequence

from .codec import encode_record
from .commit import fsync_due_at, needs_fsync
from .config import WalConfig
from .errors import WalClosedError, WalError
from .fs import OS, FileLayer
from .observe import NOOP, Meter
from .position import Position, make_position
from .reader import WalReader
from .record import Record
from .recovery import RecoveryInfo
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
        return cls._attach(log, meter), info

    # -- writing ---------------------------------------------------------------------------

    def append(self, record: Record) -> Position:
        """Append one record; returns once it is as durable as the fsync policy promises.

        An exception raised inside the write itself (a KeyboardInterrupt) stops the
        log until it is reopened (fail-stop, see ``segment_log``).
        """
        frame = encode_record(record)
        with self._write_lock:
            pos = self._log.append_frames((frame,))[0]
            end = self._log.position
        self._await_durable(end)
        return pos

    def append_batch(self, records: Iterable[Record]) -> list[Position]:
        """Append records in order with one write and one shared fsync.

        A batch that fits in one segment is one unit, written with one write
        after any roll it needs: a failed roll or write leaves none of it. A
        batch larger than a segment is written across segments; if it fails
        part way, the records before the failure may be in the log. (As for any
        write not yet acknowledged, a crash may leave a prefix of a batch.)
        """
        frames = [encode_record(r) for r in records]
        with self._write_lock:
            log = self._log
            if len(frames) > 1 and sum(map(len, frames)) <= log.max_frame:
                seg, first = log.append_frames((b"".join(frames),), (len(frames),))[0]
                offsets = itertools.accumulate(map(len, frames[:-1]), initial=first)
                positions = [make_position((seg, off)) for off in offsets]
            elif frames:
                positions = log.append_frames(frames)
            else:
                log.check_usable()
                return []
            end = log.position
        self._await_durable(end)
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

    def read_from(self, position: Position | str, *, durable_only: bool = False) -> WalReader:
        """A reader over this log from ``position`` (see ``open_reader``); also in a forked child.

        ``position`` is a Position, its ``"SEG:OFF"`` text or a ``[seg, off]`` pair (``Position.coerce``).
        """
        start = Position.coerce(position)
        if not self._log.disowned:
            self._check_open()
        return WalReader(self._log.dir, start, layer=self._log.layer, durable_only=durable_only)

    def delete_segments_before(self, position: Position | str) -> int:
        """Delete whole segments before ``position``'s segment; never the active one."""
        position = Position.coerce(position)
        with self._write_lock:
            self._check_open()
            return self._log.delete_segments_before(position)

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


_OPEN_WALS: weakref.WeakSet[Wal] = weakref.WeakSet()


def _renew_locks_in_child() -> None:
    for wal in list(_OPEN_WALS):
        wal._new_locks()


os.register_at_fork(after_in_child=_renew_locks_in_child)
