"""Consumers: named, durable cursors that follow the log (docs/CONSUMERS.md).

A ``Consumer`` is a durable-only ``WalReader`` plus a cursor file
(``cursor_store``) and a waiter: it yields ``(record, position)`` up to the
durable end, then asks its ``Waiter`` to wait for more, forever, until
``close``. ``commit(position)`` records "this record is done, resume after
it" durably before it returns; a later ``open_consumer`` of the same name,
in any process, resumes just after the last commit (at-least-once).

Rules:
1. One process holds a cursor at a time: ``NAME.lock`` is flocked for the
   consumer's life (a second ``open_consumer`` raises WalLockedError).
2. The cursor is written only by its holder, expiry only by GC, to separate
   files: a commit never hides an expiry. An expired consumer raises
   ConsumerExpiredError at open, at each segment it enters, whenever it
   waits, when its reader hits a gap, and at commit.
3. Waiting is one pluggable step (``Waiter``, nori_wal.waiters): by default
   ``SubWaiter`` wakes on the writer's wake-up socket and polls the durable
   mark when no writer runs. The file stays the truth; a waiter only says "look".
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Union

from .codec import parse_header
from .cursor import CursorState, Expiry, check_name
from .cursor_store import (
    cursor_names,
    ensure_consumers_dir,
    lock_cursor,
    read_cursor,
    read_expiry,
    remove_cursor,
    write_cursor,
)
from .durable_mark import read_mark
from .errors import ConsumerExpiredError, CorruptionError, RecordsDeletedError, WalClosedError, WalIOError
from .fs import OS, DirLock, FileLayer
from .position import START, Position
from .reader import WalReader
from .record import Record
from .recovery import read_seal
from .scan import scan_frames
from .segment import HEADER_SIZE, segment_ids, segment_name
from .waiters import POLL_INTERVAL, PollWaiter, SubWaiter, Waiter, follow_waiter

Start = Union[str, Position]
MAX_WAIT = 1.0  # seconds: a waiter returns at least this often (the consumer re-checks expiry)
_FRAME_HEAD = 32  # bytes: enough for any frame header (crc, flags, varints, ttl)


def _expired_error(directory: str, expiry: Expiry) -> ConsumerExpiredError:
    when = datetime.datetime.fromtimestamp(expiry.time_ns / 1e9, datetime.timezone.utc).isoformat(timespec="seconds")
    return ConsumerExpiredError(
        f"consumer {expiry.name!r} in {directory} was expired by retention (max_retained_bytes) at {when}: "
        f"records from {expiry.lost_from} up to {expiry.resumes_at} were deleted before it committed them; "
        f"drop_consumer({directory!r}, {expiry.name!r}) and open it again to resume from what is left"
    )


class Consumer:
    """A named durable cursor over the log in ``directory``; see ``open_consumer``."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        name: str,
        start: Start = "earliest",
        *,
        layer: FileLayer = OS,
        on_gap: str = "raise",
        waiter: Waiter | None = None,
    ):
        self.name = check_name(name)
        self.dir = os.fspath(directory)
        self._layer = layer
        if not layer.exists(self.dir):
            raise WalIOError(f"no WAL directory at {self.dir}")
        ensure_consumers_dir(layer, self.dir)
        self._lock: DirLock | None = lock_cursor(layer, self.dir, self.name)  # Rule 1
        self._closed = False
        self._commit_lock = threading.Lock()
        self._segment: int | None = None
        try:
            self._check_expired()
            state = read_cursor(layer, self.dir, self.name)
            if state is None:
                state = CursorState(self.name, self._resolve(start))
                write_cursor(layer, self.dir, state)
            self._state = state
            self._reader = WalReader(self.dir, state.next, layer=layer, durable_only=True, on_gap=on_gap)
            self._waiter: Waiter = waiter if waiter is not None else follow_waiter(self.dir, layer)
        except BaseException:
            self._lock.release()
            self._lock = None
            raise

    # -- public ------------------------------------------------------------------------

    @property
    def committed(self) -> Position | None:
        """The last committed record's position (None before the first commit)."""
        return self._state.committed

    @property
    def resume_position(self) -> Position:
        """Where a new ``open_consumer`` of this name would start reading now."""
        return self._state.next

    def __iter__(self) -> Iterator[tuple[Record, Position]]:
        """``(record, position)`` of every durable record from the cursor on; waits for more, until ``close``."""
        reader = self._reader
        while not self._closed:
            try:
                for seg, run in reader.runs():  # (a run is in one segment)
                    if seg != self._segment:
                        self._segment = seg
                        self._check_expired()
                    for item in run:
                        yield item
                        if self._closed:
                            return
            except RecordsDeletedError:
                self._check_expired()  # deleted by retention: say so, naming what was lost
                raise
            if self._closed:
                return
            self._check_expired()
            self._waiter.wait(MAX_WAIT)

    def commit(self, position: Position) -> None:
        """Record that every record up to and including ``position`` is done; durable before it returns.

        ``position`` is one this consumer yielded (the last one or an earlier
        one); committing the last committed one again does nothing. Raises
        ValueError for a position not yet yielded or before the cursor,
        ConsumerExpiredError when retention expired the cursor, WalIOError when
        the write or an fsync fails (the cursor is then the old or the new one).
        """
        position = Position(*position)
        with self._commit_lock:
            if self._closed:
                raise WalClosedError(f"consumer {self.name!r} is closed")
            if position == self._state.committed:
                return
            last = self._reader.last_read()  # the last record yielded, and its end
            if last is None or position > last[0]:
                raise ValueError(f"commit({position}): consumer {self.name!r} has not yielded that record yet")
            if position < self._state.next:
                raise ValueError(
                    f"commit({position}): before consumer {self.name!r}'s cursor ({self._state.next}); "
                    f"commits only move forward"
                )
            end = last[1] if position == last[0] else self._record_end(position)
            self._check_expired()
            state = CursorState(self.name, end, position, time.time_ns())
            write_cursor(self._layer, self.dir, state)
            self._state = state

    def close(self) -> None:
        """Stop: an iteration in another thread ends at its next step; the cursor is released. Idempotent."""
        self._closed = True
        self._waiter.wake()
        self._reader.close()
        with self._commit_lock:
            if self._lock is not None:
                self._waiter.close()
                self._lock.release()
                self._lock = None

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------

    def _check_expired(self) -> None:
        expiry = read_expiry(self._layer, self.dir, self.name)
        if expiry is not None:
            raise _expired_error(self.dir, expiry)

    def _resolve(self, start: Start) -> Position:
        """Where a new cursor starts: the oldest record, the durable end now, or a record's position."""
        if start == "earliest":
            return START
        if start == "latest":
            return latest_position(self._layer, self.dir)
        if isinstance(start, tuple) and len(start) == 2:
            return Position(*start)
        raise ValueError(f"start must be 'earliest', 'latest' or a Position, got {start!r}")

    def _record_end(self, position: Position) -> Position:
        """Where the record at ``position`` ends (read from its segment's frame header)."""
        path = os.path.join(self.dir, segment_name(position.segment_id))
        try:
            fh = self._layer.open_read(path)
            try:
                head = fh.pread(_FRAME_HEAD, position.offset)
            finally:
                fh.close()
        except OSError as exc:
            raise WalIOError(f"reading the record at {position} in {self.dir}: {exc.strerror or exc}") from exc
        lay = parse_header(head, 0, len(head))
        if type(lay) is not tuple:
            raise ValueError(f"commit({position}): no record starts there in {self.dir}")
        return Position(position.segment_id, position.offset + lay[4])


def latest_position(layer: FileLayer, directory: str) -> Position:
    """The durable end of the log now: the writer's mark, or (no mark) the end of the whole records on disk."""
    mark = read_mark(layer, directory)
    if mark is not None:
        return mark
    with WalReader(directory, START, layer=layer, on_gap="skip") as reader:
        for _ in reader:
            pass
        return reader.position or START


def open_consumer(
    directory: str | os.PathLike[str],
    name: str,
    start: Start = "earliest",
    *,
    on_gap: str = "raise",
    layer: FileLayer = OS,
    waiter: Waiter | None = None,
) -> Consumer:
    """Open (creating on first use) the consumer ``name`` of the log in ``directory``.

    ``start`` matters only when the cursor is created: "earliest" (the oldest
    record), "latest" (the durable end now) or a Position a reader yielded
    (that record first). Afterwards the consumer resumes just after its last
    commit. Raises ValueError for a bad name, WalLockedError when another
    consumer holds the name, ConsumerExpiredError when retention expired it,
    CorruptionError when its cursor file is damaged.
    """
    return Consumer(directory, name, start, layer=layer, on_gap=on_gap, waiter=waiter)


@dataclass(frozen=True)
class ConsumerInfo:
    """A registered consumer, as ``list_consumers`` sees it."""

    name: str
    committed: Position | None  # the last committed record (None: none yet)
    next: Position | None  # where it resumes (None: its cursor file is damaged)
    lag_bytes: int  # record bytes from ``next`` to the durable end
    lag_records: int  # records from ``next`` to the durable end
    last_commit: datetime.datetime | None  # UTC
    expired: bool
    lost: tuple[Position, Position] | None = None  # expired: the records deleted before it read them
    damage: str | None = None  # why its cursor file cannot be trusted


def list_consumers(directory: str | os.PathLike[str], *, layer: FileLayer = OS) -> list[ConsumerInfo]:
    """Every registered consumer of the log in ``directory``, by name, with its lag to the durable end."""
    directory = os.fspath(directory)
    if not layer.exists(directory):
        raise WalIOError(f"no WAL directory at {directory}")
    return [_info(layer, directory, name) for name in cursor_names(layer, directory)]


def _info(layer: FileLayer, directory: str, name: str) -> ConsumerInfo:
    try:
        expiry = read_expiry(layer, directory, name)
        expired = expiry is not None
    except CorruptionError:
        expiry, expired = None, True
    try:
        state = read_cursor(layer, directory, name)
    except CorruptionError as exc:
        return ConsumerInfo(name, None, None, 0, 0, None, expired, damage=str(exc))
    lost = (expiry.lost_from, expiry.resumes_at) if expiry is not None else None
    if state is None:
        return ConsumerInfo(name, None, None, 0, 0, None, expired, lost)
    lag_bytes, lag_records = (0, 0) if expired else measure_lag(layer, directory, state.next)
    when = None
    if state.time_ns:
        when = datetime.datetime.fromtimestamp(state.time_ns / 1e9, datetime.timezone.utc)
    return ConsumerInfo(name, state.committed, state.next, lag_bytes, lag_records, when, expired, lost)


def measure_lag(layer: FileLayer, directory: str, start: Position, *, count_records: bool = True) -> tuple[int, int]:
    """(record bytes, records) from ``start`` to the durable end; a sealed segment counts from its seal.

    ``count_records=False`` reads no records (only seals): the bytes, and 0
    records -- what a metrics scrape inside the writer can afford.
    """
    end = read_mark(layer, directory)
    lag_bytes = lag_records = 0
    for sid in segment_ids(layer.listdir(directory)):
        if sid < start.segment_id or (end is not None and sid > end.segment_id):
            continue
        try:
            fh = layer.open_read(os.path.join(directory, segment_name(sid)))
        except FileNotFoundError:
            continue
        try:
            size = fh.size()
            seal = read_seal(fh, size)
            lo = max(start.offset, HEADER_SIZE) if sid == start.segment_id else HEADER_SIZE
            hi = end.offset if end is not None and sid == end.segment_id else (seal.data_end if seal else size)
            if hi <= lo:
                continue
            if seal is not None and lo == HEADER_SIZE and hi == seal.data_end:
                lag_bytes += hi - lo
                lag_records += seal.record_count
            elif not count_records:
                lag_bytes += hi - lo
            else:
                scan = scan_frames(fh.pread(hi - lo, lo), 0)
                lag_bytes += scan.valid_end
                lag_records += scan.records
        finally:
            fh.close()
    return lag_bytes, lag_records


def drop_consumer(directory: str | os.PathLike[str], name: str, *, layer: FileLayer = OS) -> bool:
    """Forget the consumer ``name`` (its cursor stops holding GC back); whether it existed.

    Raises WalLockedError while a consumer of that name is open (in any process).
    """
    check_name(name)
    directory = os.fspath(directory)
    if name not in cursor_names(layer, directory):
        return False
    lock = lock_cursor(layer, directory, name)
    try:
        return remove_cursor(layer, directory, name)
    finally:
        lock.release()


__all__ = [
    "POLL_INTERVAL",
    "Consumer",
    "ConsumerInfo",
    "PollWaiter",
    "SubWaiter",
    "Waiter",
    "drop_consumer",
    "latest_position",
    "list_consumers",
    "measure_lag",
    "open_consumer",
]
