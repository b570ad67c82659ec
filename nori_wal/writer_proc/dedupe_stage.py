"""The writer's idempotency keys: which frames of a keyed APPEND are written, where the rest already are.

The writer keeps the same ``DedupeIndex`` as the embedded ``Wal`` (rebuilt at
start from key files and the log, key files written before each seal).

Rules:
1. Only payloads that hold keyed frames come here: the validating scan finds
   them (each keyed frame's offset and key, in the same walk:
   ``codec.fast_run``), so an unkeyed append pays nothing, and a producer
   cannot skip the check by leaving out a hint. The common request (its keys
   distinct, none in the index or earlier in the group, no larger than a
   segment holds) has its keys reserved with one ``DedupeIndex.reserve_new``;
   any other is parsed again, frame by frame.
2. Each keyed frame is judged on its own: a key in the index, or already
   taken by an earlier frame of this group (this request or another one), is
   a duplicate: not written; its reply gives the original Position. A
   request's other frames are written, in order, as its units.
3. A key is remembered right after the unit that carries it is written and
   before a later unit can roll the segment: the roll seals the segment, and
   its key file must hold every key in it (``dedupe_files`` Rule 1). So a
   keyed group that needs a roll is written unit by unit.
4. A duplicate is acknowledged with its group, once the log's end at that
   time is durable per the policy: the original is never after it.
5. Reply: a request without duplicates gets the usual runs. One with
   duplicates gets ``{"runs": [...], "dups": [index, segment_id, offset, ...]}``:
   the runs cover the frames written, in order; ``dups`` names each duplicate
   frame by its index in the request and gives the original's position.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Sequence, Union

from .. import protocol as P
from ..codec import FORMAT_MAX_FRAME, frame_layout, idempotency_key_of
from ..dedupe import PENDING, DedupeIndex, KeyRun, auto_count, index_for
from ..dedupe_files import RebuildInfo, rebuild_index, remove_stale_key_files, write_key_file
from ..errors import DedupeCapacityError, WalError, WalIOError
from ..position import Position
from ..record import BytesLike
from ..segment_log import SegmentLog

_tuple_new = tuple.__new__  # a NamedTuple without NamedTuple.__new__'s Python-level call (hot path)
# Where a duplicate's original is: known (in the index), or a frame of this group: (unit, offset in it).
Ref = Union[Position, tuple[int, int]]


def now_ms() -> int:
    """Wall-clock milliseconds: the dedupe window's clock (key times survive restarts)."""
    return time.time_ns() // 1_000_000


class WriterKeys:
    """The writer's dedupe index and its clock (one per writer)."""

    def __init__(self, index: DedupeIndex, clock: Callable[[], int] = now_ms):
        self.index = index
        self.clock = clock
        self.rebuild = RebuildInfo(0, 0, 0, 0)

    def begin_group(self) -> GroupKeys:
        return GroupKeys(self.index, self.clock())


def open_keys(seglog: SegmentLog) -> WriterKeys:
    """Rebuild the index of a just-opened log and hook its key files to every seal (as ``Wal.open`` does).

    Raises WalIOError when the key files or segments cannot be read (the writer does not start).
    """
    keys = WriterKeys(index_for(seglog.config))
    try:
        keys.rebuild = rebuild_index(seglog.layer, seglog.dir, list(seglog.segment_ids), keys.index, keys.clock())
    except OSError as exc:
        if isinstance(exc, WalError):
            raise
        raise WalIOError(f"rebuilding the dedupe index of {seglog.dir} failed: {exc.strerror or exc}") from exc

    def before_seal(segment_id: int, data_end: int, record_count: int) -> None:
        write_key_file(seglog.layer, seglog.dir, segment_id, data_end, record_count, keys.index)

    seglog.before_seal = before_seal
    return keys


def after_delete(seglog: SegmentLog) -> None:
    """Key files of segments GC deleted describe nothing: best effort (the next start retries)."""
    try:
        remove_stale_key_files(seglog.layer, seglog.dir, list(seglog.segment_ids))
    except OSError:
        pass


class KeyedUnits(NamedTuple):
    """What a keyed request adds to its group: units to write (``counts`` frames each) and its duplicates."""

    units: list[BytesLike]
    counts: list[int]
    dups: list[tuple[int, Ref]]  # (frame index in the request, where its original is)


class GroupKeys:
    """The keyed requests of one group (pure: the clock was read once, by ``WriterKeys``)."""

    __slots__ = ("dups", "index", "now", "runs")

    def __init__(self, index: DedupeIndex, now: int):
        self.index = index
        self.now = now
        self.runs: dict[int, list[KeyRun]] = {}  # unit -> the runs its new keys are reserved in (Rule 3)
        self.dups: dict[int, list[tuple[int, Ref]]] = {}  # request (pending index) -> its duplicates

    def add(
        self, payload: BytesLike, count: int, found: list[int | bytes], max_frame: int, first_unit: int
    ) -> KeyedUnits | WalError:
        """Plan a validated keyed payload of ``count`` frames whose units will start at group unit
        ``first_unit`` (Rule 2).

        ``found``: its keyed frames' offsets and keys, as the validation
        found them (``protocol.validate_payload``). A DedupeCapacityError (new
        keys past a cap) refuses the whole request, and nothing of it is planned.
        """
        if len(payload) <= max_frame:  # the common request (Rule 1)
            try:
                runs = self.index.reserve_new(found[1::2], found[0::2], self.now, first_unit)  # type: ignore[arg-type]
            except DedupeCapacityError as exc:
                return exc
            if runs is not None:
                self.runs[first_unit] = runs
                return _tuple_new(KeyedUnits, ([payload], [count], []))
        return self._add_one_by_one(payload, max_frame, first_unit)  # (also a key repeated within it)

    def _room(self, new_keys: int, new_auto: int) -> DedupeCapacityError | None:
        """The error when ``new_keys`` more keys do not fit (keys this group reserved are held already)."""
        try:
            self.index.check_room(new_keys, self.now, new_auto)
        except DedupeCapacityError as exc:
            return exc
        return None

    def _add_one_by_one(self, payload: BytesLike, max_frame: int, first_unit: int) -> KeyedUnits | WalError:
        """``add`` for a payload with a duplicate (of the index, of this group, or within itself), or
        larger than a segment holds: each frame judged on its own."""
        index, now = self.index, self.now
        index.expire(now)  # a key held past its window is dropped: what lookup says new, reserve takes
        kept: list[tuple[int, int, bytes | None]] = []
        dups: list[tuple[int, Ref | int]] = []  # an int: the kept frame of this request it repeats
        fresh: dict[bytes, int] = {}
        for i, (start, end, key) in enumerate(frame_spans(payload)):
            if key is not None:
                ref: Ref | int | None = fresh.get(key)
                if ref is None:
                    ref = index.reserved(key)  # an earlier request of this group: (unit, offset in it)
                if ref is None:
                    ref = index.lookup(key, now)
                if ref is not None:
                    dups.append((i, ref))
                    continue
                fresh[key] = len(kept)
            kept.append((start, end, key))
        if fresh:
            err = self._room(len(fresh), auto_count(list(fresh)))
            if err is not None:
                return err
        if not dups and len(payload) <= max_frame:  # all of it is written, as one unit: no copy
            units, counts, where = [payload], [len(kept)], [(0, s) for s, _e, _k in kept]
        else:
            units, counts, where = _cut(payload, kept, max_frame)
        by_unit: dict[int, tuple[list[bytes], list[int]]] = {}
        for j, (_s, _e, key) in enumerate(kept):
            if key is not None:
                u, off = where[j]
                unit_keys, unit_offsets = by_unit.setdefault(u, ([], []))
                unit_keys.append(key)
                unit_offsets.append(off)
        for u, (unit_keys, unit_offsets) in by_unit.items():
            runs = index.reserve(unit_keys, unit_offsets, auto_count(unit_keys), now, first_unit + u)
            assert runs is not None, "distinct keys none of which is held"
            self.runs[first_unit + u] = runs
        resolved: list[tuple[int, Ref]] = []
        for i, ref in dups:
            if isinstance(ref, int):
                u, off = where[ref]
                resolved.append((i, (first_unit + u, off)))
            else:
                resolved.append((i, ref))
        return KeyedUnits(units, counts, resolved)

    def remember(self, unit: int, first: Position) -> None:
        """The unit ``unit`` was written at ``first``: its reserved keys are placed there (Rule 3)."""
        runs = self.runs.get(unit)
        if runs is not None:
            self.index.place(runs, first[0], first[1])

    def abandon(self) -> None:
        """The group was not written (and the writer goes on): forget the keys it reserved and did not place."""
        for runs in self.runs.values():
            self.index.release([run for run in runs if run.segment_id == PENDING])
        self.runs.clear()

    def reply(self, request_id: int, pending_index: int, runs: list[int], firsts: Sequence[Position]) -> bytes | None:
        """The reply of a request with duplicates (Rule 5), or None when it has none."""
        dups = self.dups.get(pending_index)
        if not dups:
            return None
        flat: list[int] = []
        for i, ref in dups:
            if isinstance(ref, Position):
                flat += (i, ref.segment_id, ref.offset)
            else:
                seg, off = firsts[ref[0]]
                flat += (i, seg, off + ref[1])
        return P.encode_ok(request_id, {"runs": runs, "dups": flat})


def frame_spans(payload: BytesLike) -> list[tuple[int, int, bytes | None]]:
    """``(start, end, idempotency key or None)`` of each frame of a validated payload."""
    out: list[tuple[int, int, bytes | None]] = []
    off, n = 0, len(payload)
    while off < n:
        lay = frame_layout(payload, off, n, FORMAT_MAX_FRAME)
        assert type(lay) is tuple, "the payload was validated"
        out.append((off, lay[4], idempotency_key_of(payload, lay)))
        off = lay[4]
    return out


def _cut(
    payload: BytesLike, kept: list[tuple[int, int, bytes | None]], max_frame: int
) -> tuple[list[BytesLike], list[int], list[tuple[int, int]]]:
    """The kept frames as units of at most ``max_frame`` bytes; each frame's (unit, offset in it)."""
    mv = memoryview(payload)
    units: list[BytesLike] = []
    counts: list[int] = []
    where: list[tuple[int, int]] = []
    parts: list[memoryview] = []
    size = 0
    for start, end, _key in kept:
        n = end - start
        if parts and size + n > max_frame:
            units.append(b"".join(parts))
            counts.append(len(parts))
            parts, size = [], 0
        where.append((len(units), size))
        parts.append(mv[start:end])
        size += n
    if parts:
        units.append(b"".join(parts))
        counts.append(len(parts))
    return units, counts, where


def write_keyed_group(log: SegmentLog, units: list[BytesLike], counts: list[int], keys: GroupKeys) -> list[Position]:
    """Write a group holding keyed requests; each unit's first Position. Keys are remembered per Rule 3.

    One write when it all fits in the active segment; else unit by unit, each
    unit's keys remembered before the next unit may roll.
    """
    if not units:
        log.check_usable()
        return []
    nbytes = sum(map(len, units))
    start = log.append_in_place(units, sum(counts), nbytes)
    firsts: list[Position] = []
    if start is not None:
        seg, off = log.active_id, start
        for u, unit in enumerate(units):
            first = Position(seg, off)
            firsts.append(first)
            keys.remember(u, first)
            off += len(unit)
        return firsts
    for u, (unit, count) in enumerate(zip(units, counts)):
        first = log.append_frames([unit], [count])[0]
        firsts.append(first)
        keys.remember(u, first)
    return firsts


__all__ = ["GroupKeys", "KeyedUnits", "WriterKeys", "after_delete", "frame_spans", "open_keys", "write_keyed_group"]
