"""The dedupe index and key files: which idempotency keys the log holds, and where (pure: no I/O).

Rules:
1. An entry is (key, Position of the record that first carried it, the time
   it was appended, wall-clock ms). A key is remembered at least its class's
   window after that time; the first record is the original: a later add of
   a key still remembered changes nothing (``add`` returns False).
2. Two classes of keys, by shape: an automatic key (``is_auto_key``: 16
   bytes starting with ``AUTO_KEY_PREFIX``, what a retrying client gives a
   record without a key, ``client/retry.py``) only has to outlive its
   client's retries, so it is remembered ``auto_window_ms``
   (``WalConfig.auto_key_window``, longer than ``MAX_DELIVERY_TIMEOUT``);
   every other key, ``window_ms`` (``WalConfig.dedupe_window``). Each class
   has its own expiry queue and its own cap.
3. Memory is bounded by ``max_keys`` (other keys) and ``max_auto_keys``.
   Forgetting a key inside its window would turn a retry into a duplicate,
   so the index never evicts early: a NEW key that would exceed its class's
   cap after expired keys are dropped is refused (``DedupeCapacityError``)
   and nothing is written; duplicates are still answered. Size a cap as
   keyed appends per second x window. Per key: about 126 bytes + the key's
   length (a dict slot, the key's bytes object, its offset and a slot in
   two lists; ``scripts/dedupe_bench.py`` measures it).
4. Keys live in runs (``KeyRun``): keys of one class appended together in one
   segment, with one time, their offsets in log order. The dict maps a key
   to its run's serial number, so a batch of new keys goes in with one
   ``dict.update`` and no Python step per key, and a run finds a key's
   Position only when asked (a duplicate). The dict then holds only bytes and
   ints, and a run older than its class's newest holds tuples: the garbage
   collector walks a run per batch, never each key. A run takes more keys
   only within ``merge_span_ms`` of its first (a log's index:
   ``MERGE_SPAN_MS``, so that one-at-a-time appends do not make a run each),
   and its time is its newest key's: every key is remembered at least its
   window, and at most ``merge_span_ms`` longer (with 0, exactly its window).
5. A batch's keys are reserved before it is written (``reserve_new``:
   ``all_new`` said none is held, ``check_room`` that they fit; ``reserve``
   finds a key repeated in the batch by the dict's size, and then changes
   nothing), then placed where the write put them (``place``), or released if it was not written
   (``release``). A reserved key is held but not remembered: ``lookup`` says
   None, ``reserved`` gives the caller's tag for where it will be, and key
   files leave it out (its run's segment is ``PENDING``).
6. Keys are added with a clock that never runs backwards (``now`` is raised
   to the last one seen), so each class's queue of runs is in time order and
   expiry drops whole runs from its oldest end: O(1) amortised per key.
7. Key files (``NNNNNN.keys``, docs/FORMAT.md) hold a sealed segment's keys
   (both classes) and their times, so an open need not scan sealed segments.
   One is checked against the seal of the segment it describes and its CRCs;
   anything that does not match is ignored and the segment is scanned
   instead: a key file is a cache, never trusted over the log.
"""

from __future__ import annotations

import struct
from collections import deque
from datetime import timedelta
from itertools import chain, count, islice, repeat
from operator import gt
from typing import Collection, NamedTuple, Sequence

from crc32c import crc32c

from .config import WalConfig
from .errors import DedupeCapacityError
from .position import Position, make_position

AUTO_KEY_PREFIX = b"\x00"  # a byte no text key starts with: automatic keys never collide with a caller's
AUTO_KEY_SIZE = 16  # the prefix, a producer id (8 bytes) and a sequence (7 bytes): client/retry.py
MAX_DELIVERY_TIMEOUT = 120.0  # seconds: the longest a client retries; an automatic key outlives it (Rule 2)
PENDING = 2**64  # the segment id of a reserved run, not yet written (Rule 5)
MERGE_SPAN_MS = 1000  # a log's index: a run takes keys added within this long of its first (Rule 4)
_CONSUME = deque[object](maxlen=0).extend  # runs an iterator to its end (C-level)


def is_auto_key(key: bytes) -> bool:
    """Whether ``key`` has the shape of an automatic key (Rule 2)."""
    return len(key) == AUTO_KEY_SIZE and key[0] == 0


def auto_count(keys: Sequence[bytes]) -> int:
    """How many of ``keys`` are automatic; without a Python step per key when none or all are."""
    if not keys or min(keys)[0] != 0:
        return 0
    if max(keys)[0] == 0 and min(map(len, keys)) == max(map(len, keys)) == AUTO_KEY_SIZE:
        return len(keys)
    return sum(map(is_auto_key, keys))


def index_for(config: WalConfig) -> DedupeIndex:
    """The empty index a log of ``config`` keeps (its windows in ms, its caps)."""
    ms = timedelta(milliseconds=1)
    return DedupeIndex(
        max(1, config.dedupe_window // ms),
        config.dedupe_max_keys,
        max(1, config.auto_key_window // ms),
        config.dedupe_max_auto_keys,
        merge_span_ms=MERGE_SPAN_MS,
    )


class AppendResult(NamedTuple):
    """Where a record is, and whether this append found it already there (a key within the window)."""

    position: Position
    duplicate: bool


class KeyColumns(NamedTuple):
    """Keys and where and when each was appended, as three lists (a key file's entries)."""

    keys: list[bytes]
    offsets: list[int]
    times: list[int]


class KeyRun:
    """Keys of one class appended together in one segment (Rule 4): ``keys[i]`` is at ``base + offsets[i]``.

    Only the newest run of a class takes more keys; an older one holds tuples
    (``close``), which the garbage collector stops walking after one look.
    """

    __slots__ = ("auto", "base", "first", "keys", "offsets", "segment_id", "serial", "time", "unit", "where")

    def __init__(
        self,
        auto: bool,
        segment_id: int,
        base: int,
        time: int,
        keys: list[bytes] | tuple[bytes, ...],
        offsets: list[int] | tuple[int, ...],
    ):
        self.serial = 0  # the index's name for it (what its keys map to)
        self.auto, self.segment_id, self.base = auto, segment_id, base
        self.first = self.time = time
        self.keys: list[bytes] | tuple[bytes, ...] = keys
        self.offsets: list[int] | tuple[int, ...] = offsets
        self.where: dict[bytes, int] | None = None  # key -> offset, made at the first lookup
        self.unit = 0  # while reserved (segment_id PENDING): the caller's tag for where it will be written

    def position(self, key: bytes) -> Position:
        where = self.where
        if where is None:
            where = self.where = dict(zip(self.keys, self.offsets))
        return make_position((self.segment_id, self.base + where[key]))

    def close(self) -> None:
        """No more keys come: hold them in tuples."""
        self.keys, self.offsets = tuple(self.keys), tuple(self.offsets)

    def extend(self, keys: Sequence[bytes], offsets: Sequence[int], base: int, time: int) -> None:
        """Take more keys (at ``base + offsets``) appended at ``time`` (>= the run's)."""
        if base != self.base:
            offsets = [base - self.base + off for off in offsets]
        own_keys = list(self.keys) if isinstance(self.keys, tuple) else self.keys
        own_offsets = list(self.offsets) if isinstance(self.offsets, tuple) else self.offsets
        own_keys += keys
        own_offsets += offsets
        self.keys, self.offsets = own_keys, own_offsets
        if self.where is not None:
            self.where.update(zip(keys, offsets))
        self.time = time


class DedupeIndex:
    """key -> (original Position, append time in ms) for keys appended within their class's window.

    ``auto_window_ms`` and ``max_auto_keys`` (automatic keys, Rule 2) default to
    ``window_ms`` and ``max_keys``; ``merge_span_ms`` (Rule 4) to 0.
    """

    def __init__(
        self,
        window_ms: int,
        max_keys: int,
        auto_window_ms: int | None = None,
        max_auto_keys: int | None = None,
        *,
        merge_span_ms: int = 0,
    ):
        auto_window_ms = window_ms if auto_window_ms is None else auto_window_ms
        max_auto_keys = max_keys if max_auto_keys is None else max_auto_keys
        if min(window_ms, auto_window_ms) <= 0 or min(max_keys, max_auto_keys) < 1:
            raise ValueError(
                f"windows and caps must be positive, got {window_ms}, {auto_window_ms} ms and {max_keys}, "
                f"{max_auto_keys} keys"
            )
        self.window_ms = window_ms
        self.max_keys = max_keys
        self.auto_window_ms = auto_window_ms
        self.max_auto_keys = max_auto_keys
        self.merge_span_ms = merge_span_ms
        # key -> its run's serial, a plain int: a dict of bytes and ints is one the garbage collector
        # never walks (mapping keys to the runs themselves made every full collection visit every key).
        self._entries: dict[bytes, int] = {}
        self._by_serial: dict[int, KeyRun] = {}
        self._serials = count(1)
        self._runs = (deque[KeyRun](), deque[KeyRun]())  # other keys' runs, automatic keys' runs: oldest first
        self._held = [0, 0]  # keys held per class (the same order)
        self._now = 0  # the latest time seen: the clock never runs backwards here (Rule 6)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def auto_keys(self) -> int:
        """How many automatic keys are held (``len`` counts both classes)."""
        return self._held[1]

    def _run_of(self, key: bytes) -> KeyRun | None:
        serial = self._entries.get(key)
        return None if serial is None else self._by_serial[serial]

    def _register(self, run: KeyRun) -> KeyRun:
        run.serial = serial = next(self._serials)
        self._by_serial[serial] = run
        return run

    def _push(self, run: KeyRun) -> None:
        """Add ``run`` as its class's newest: the one before it takes no more keys."""
        runs = self._runs[run.auto]
        if runs:
            runs[-1].close()
        runs.append(run)

    def _clock(self, now_ms: int) -> int:
        if now_ms > self._now:
            self._now = now_ms
        return self._now

    def expire(self, now_ms: int) -> int:
        """Drop keys older than their window at ``now_ms``; returns how many were dropped."""
        now = self._clock(now_ms)
        entries, held = self._entries, self._held
        dropped = 0
        for cls, window in ((0, self.window_ms), (1, self.auto_window_ms)):
            runs = self._runs[cls]
            cutoff = now - window
            while runs and runs[0].time < cutoff:
                run = runs.popleft()
                del self._by_serial[run.serial]
                keys = run.keys
                _CONSUME(map(entries.__delitem__, keys))  # each key is in one run, the one it maps to
                held[cls] -= len(keys)
                dropped += len(keys)
        return dropped

    def lookup(self, key: bytes, now_ms: int) -> Position | None:
        """The original Position of ``key`` if it is remembered at ``now_ms``, else None (also for a key
        reserved and not yet written: ``reserved`` says where it will be)."""
        run = self._run_of(key)
        if run is None or run.time < self._clock(now_ms) - (self.auto_window_ms if run.auto else self.window_ms):
            return None  # (an expired key is dropped at the next ``expire``)
        if run.segment_id == PENDING:
            return None
        return run.position(key)

    def check_room(self, new_keys: int, now_ms: int, new_auto: int = 0) -> None:
        """Raise DedupeCapacityError unless ``new_keys`` more keys, ``new_auto`` of them automatic, fit
        (after dropping expired ones)."""
        other, held = new_keys - new_auto, self._held
        if held[0] + other <= self.max_keys and held[1] + new_auto <= self.max_auto_keys:
            return
        self.expire(now_ms)
        if held[0] + other > self.max_keys:
            raise DedupeCapacityError(
                f"the dedupe index holds {held[0]} keys appended within the last "
                f"{self.window_ms} ms and may hold at most {self.max_keys} (WalConfig.dedupe_max_keys): "
                f"{other} new key(s) refused, nothing written. Raise dedupe_max_keys (about 126 bytes + the "
                f"key's length each) or shorten dedupe_window"
            )
        if held[1] + new_auto > self.max_auto_keys:
            raise DedupeCapacityError(
                f"the dedupe index holds {held[1]} automatic keys (a retrying client's) appended "
                f"within the last {self.auto_window_ms} ms and may hold at most {self.max_auto_keys} "
                f"(WalConfig.dedupe_max_auto_keys): {new_auto} new key(s) refused, nothing written. Raise "
                f"dedupe_max_auto_keys (about 142 bytes each) or shorten auto_key_window"
            )

    def add(self, key: bytes, position: Position, now_ms: int, *, check: bool = True) -> bool:
        """Remember ``key`` at ``position`` (appended at ``now_ms``); False if it is already remembered.

        ``check`` refuses a new key past its class's cap (Rule 3, DedupeCapacityError).
        """
        now = self._clock(now_ms)
        if check and self.lookup(key, now) is None:
            self.check_room(1, now, 1 if is_auto_key(key) else 0)
        return self._put(key, position, now)

    def all_new(self, keys: Collection[bytes]) -> bool:
        """True if no key of ``keys`` is held, remembered or expired-not-yet-dropped (Rule 5)."""
        return self._entries.keys().isdisjoint(keys)

    def reserve_new(self, keys: list[bytes], offsets: list[int], now_ms: int, unit: int = 0) -> list[KeyRun] | None:
        """The common batch (Rule 5): ``keys`` reserved as ``reserve`` does when none is held and none
        repeats; else None and nothing changed (judge its keys one by one). Raises DedupeCapacityError
        when they do not fit."""
        if not self.all_new(keys):
            return None
        n_auto = auto_count(keys)
        self.check_room(len(keys), now_ms, n_auto)
        return self.reserve(keys, offsets, n_auto, now_ms, unit)

    def reserve(
        self, keys: list[bytes], offsets: list[int], n_auto: int, now_ms: int, unit: int = 0
    ) -> list[KeyRun] | None:
        """Hold ``keys`` (none held: ``all_new``; room checked) before they are written (Rule 5): their runs,
        to ``place`` once written (or ``release``); None, and nothing changed, when a key repeats in ``keys``.

        ``offsets``: where each key's frame is from the start of what is written; ``n_auto``:
        ``auto_count(keys)``; ``unit``: the caller's tag, which ``reserved`` gives.
        """
        t = self._clock(now_ms)
        if n_auto == 0 or n_auto == len(keys):
            runs = [self._register(KeyRun(n_auto > 0, PENDING, 0, t, keys, offsets))]
        else:  # a mixed batch: a run per class (both written at the same place)
            auto = [is_auto_key(k) for k in keys]
            runs = [
                self._register(KeyRun(cls, PENDING, 0, t, [k for k, a in zip(keys, auto) if a is cls], []))
                for cls in (False, True)
            ]
            if offsets:
                for run in runs:
                    run.offsets = [o for o, a in zip(offsets, auto) if a is run.auto]
        entries = self._entries
        before = len(entries)
        for run in runs:
            run.unit = unit
            entries.update(zip(run.keys, repeat(run.serial)))
        if len(entries) != before + len(keys):  # a key repeated: undo (every key was new, nothing was replaced)
            _CONSUME(map(entries.pop, keys, repeat(None)))
            for run in runs:
                del self._by_serial[run.serial]
            return None
        for run in runs:
            self._push(run)
            self._held[run.auto] += len(run.keys)
        return runs

    @staticmethod
    def place(runs: list[KeyRun], segment_id: int, base: int) -> None:
        """Reserved ``runs`` were written from ``segment_id:base``."""
        for run in runs:
            run.segment_id, run.base = segment_id, base

    def release(self, runs: list[KeyRun]) -> None:
        """Reserved ``runs`` will not be written: forget their keys."""
        for run in runs:
            _CONSUME(map(self._entries.pop, run.keys, repeat(None)))
            del self._by_serial[run.serial]
            self._runs[run.auto].remove(run)
            self._held[run.auto] -= len(run.keys)

    def reserved(self, key: bytes) -> tuple[int, int] | None:
        """``(unit, offset)`` of a reserved, not yet written key (as given to ``reserve``), else None."""
        run = self._run_of(key)
        if run is None or run.segment_id != PENDING:
            return None
        return run.unit, run.offsets[run.keys.index(key)]

    def _add_run(self, auto: bool, keys: list[bytes], offsets: list[int], segment_id: int, base: int, t: int) -> None:
        """Add new keys of one class at time ``t`` (>= every time held): to the newest run if it may take
        them (Rule 4), else as a new run."""
        runs = self._runs[auto]
        run = runs[-1] if runs else None
        if run is not None and len(keys) < 16 and run.segment_id == segment_id and t - run.first <= self.merge_span_ms:
            run.extend(keys, offsets, base, t)
        else:
            run = self._register(KeyRun(auto, segment_id, base, t, keys, offsets))
            self._push(run)
        if len(keys) == 1:
            self._entries[keys[0]] = run.serial
        else:
            self._entries.update(zip(keys, repeat(run.serial)))
        self._held[auto] += len(keys)

    def restore(self, key: bytes, position: Position, time_ms: int) -> bool:
        """Remember a key read back from the log or a key file, appended at ``time_ms``.

        Keys come in log order and are never refused (they are in the log
        already). A time earlier than one restored before is raised to it (Rule 6:
        remembered longer, never shorter). False if the key was already remembered.
        """
        return self._put(key, position, self._clock(time_ms))

    def _put(self, key: bytes, position: Position, t: int) -> bool:
        """Insert at time ``t`` (>= every time held); the first position of a remembered key stays."""
        auto = is_auto_key(key)
        old = self._run_of(key)
        if old is not None:
            if old.time >= t - (self.auto_window_ms if auto else self.window_ms):
                return False
            self.expire(t)  # the old entry is past the window: this drops its run
        self._add_run(auto, [key], [position.offset], position.segment_id, 0, t)
        return True

    def segment_entries(self, segment_id: int) -> list[tuple[bytes, int, int]]:
        """``(key, offset, time_ms)`` of the keys remembered in ``segment_id``, in log order."""
        return list(zip(*self.segment_columns(segment_id)))

    def segment_columns(self, segment_id: int) -> KeyColumns:
        """The keys remembered in ``segment_id``, their offsets and times, in log order (a key file's).

        Runs are added in log order, so in each queue a segment's runs are at
        the newest end: the walk stops at the first run of an earlier segment.
        No Python step per key (a writer's segment may hold millions) and no
        tuple per key (the collector would walk each).
        """
        cols = KeyColumns([], [], [])
        for runs in self._runs:
            mine: list[KeyRun] = []
            for run in reversed(runs):
                if run.segment_id < segment_id:
                    break
                if run.segment_id == segment_id:
                    mine.append(run)
            for run in reversed(mine):  # (a run's offsets ascend, and so do runs of one class)
                cols.keys.extend(run.keys)
                cols.offsets.extend(map(run.base.__add__, run.offsets))
                cols.times.extend(repeat(run.time, len(run.keys)))
        offsets = cols.offsets
        if any(map(gt, offsets, islice(offsets, 1, None))):  # (both classes in the segment: interleave)
            order = sorted(range(len(offsets)), key=offsets.__getitem__)
            keys, times = cols.keys, cols.times
            cols = KeyColumns(
                list(map(keys.__getitem__, order)),
                list(map(offsets.__getitem__, order)),
                list(map(times.__getitem__, order)),
            )
        return cols


# -- key files ------------------------------------------------------------------------------

KEY_FILE_SUFFIX = ".keys"
KEY_FILE_MAGIC = b"NORIKEYS"
KEY_FILE_VERSION = 1
_KF_HEAD = struct.Struct("<8sHHIQQQQ")  # magic, version, header size, count, segment, data_end, records, newest
KEY_FILE_HEADER_SIZE = _KF_HEAD.size + 8  # + CRC32C of the header, CRC32C of the entries
_KF_ENTRY = struct.Struct("<QQB")  # time_ms, offset, key length; then the key


class KeyFileHead(NamedTuple):
    """The checked header of a key file."""

    entry_count: int
    segment_id: int
    data_end: int
    record_count: int
    newest_ms: int
    entries_crc: int


def key_file_name(segment_id: int) -> str:
    return f"{segment_id:06d}{KEY_FILE_SUFFIX}"


def parse_key_file_name(name: str) -> int | None:
    """The segment id a key file name is for, or None."""
    stem, dot, ext = name.partition(".")
    if dot and "." + ext == KEY_FILE_SUFFIX and len(stem) >= 6 and stem.isdigit() and stem.isascii():
        return int(stem)
    return None


def encode_key_file(segment_id: int, data_end: int, record_count: int, cols: KeyColumns) -> bytes:
    """The bytes of the key file for a segment sealed at ``data_end`` holding ``record_count`` records."""
    keys, offsets, times = cols
    # Each entry's fixed part, then its key, joined without a Python step per entry.
    body = b"".join(chain.from_iterable(zip(map(_KF_ENTRY.pack, times, offsets, map(len, keys)), keys)))
    newest = max(times, default=0)
    head = _KF_HEAD.pack(
        KEY_FILE_MAGIC, KEY_FILE_VERSION, KEY_FILE_HEADER_SIZE, len(keys), segment_id, data_end, record_count, newest
    )
    return head + struct.pack("<II", crc32c(head), crc32c(body)) + body


def decode_key_file_head(data: bytes, segment_id: int, data_end: int, record_count: int) -> KeyFileHead | str:
    """The header of a key file if it is valid for that segment and seal, else the reason it is not."""
    if len(data) < KEY_FILE_HEADER_SIZE:
        return "key file header cut short"
    magic, version, hsize, count, sid, end, records, newest = _KF_HEAD.unpack_from(data)
    head_crc, body_crc = struct.unpack_from("<II", data, _KF_HEAD.size)
    if magic != KEY_FILE_MAGIC or crc32c(data[: _KF_HEAD.size]) != head_crc:
        return "not a valid key file header"
    if version != KEY_FILE_VERSION or hsize != KEY_FILE_HEADER_SIZE:
        return f"unknown key file version {version}"
    if (sid, end, records) != (segment_id, data_end, record_count):
        return f"describes segment {sid} sealed at {end} with {records} records, not this segment's seal"
    return KeyFileHead(count, sid, end, records, newest, body_crc)


def decode_key_file_entries(head: KeyFileHead, body: bytes) -> list[tuple[bytes, int, int]] | str:
    """``(key, offset, time_ms)`` of a key file's entries, or the reason they are not valid."""
    if crc32c(body) != head.entries_crc:
        return "key file entries fail their checksum"
    out: list[tuple[bytes, int, int]] = []
    p, n = 0, len(body)
    unpack = _KF_ENTRY.unpack_from
    for _ in range(head.entry_count):
        if p + _KF_ENTRY.size > n:
            return "key file entries cut short"
        t, off, klen = unpack(body, p)
        p += _KF_ENTRY.size
        if not 1 <= klen <= 128 or p + klen > n or off >= head.data_end:
            return "key file entry out of range"
        out.append((body[p : p + klen], off, t))
        p += klen
    if p != n:
        return "key file has bytes after its entries"
    return out
