"""Crash-state exploration: run a workload on a FaultFS, crash it every way, recover, check.

How it works (the ALICE / CrashMonkey recipe, in-process):

1. ``run_workload`` (in ``workload``; its names import from here too) drives
   an embedded ``Wal`` on a ``FaultFS`` through ``Step``s (appends, batch
   appends, syncs, GC, clean close + reopen) and takes a snapshot of the
   layer after every syscall that can change what a crash leaves
   (``MUTATING_OPS``), together with what had been acknowledged at that
   instant; and another at the instant each append (or GC) returns,
   holding the layer still: an append that returned before its fsync shows
   there, even when its fsync comes at the start of the next call.
2. ``crash_variants`` turns each snapshot into crash states: power loss
   (unsynced bytes and directory entries lost), prefixes of the unsynced
   writes kept, the last write torn at sampled bytes and sector edges, tails
   zero-filled, writes written back out of order (an early unsynced write lost
   while later ones landed: a hole), directory operations half journalled, and process crashes
   (everything the kernel got survives; the write in flight may be torn).
3. ``Explorer.check`` recovers each state with ``Wal.open`` and checks the
   invariants: every record the policy promised is present and identical;
   the recovered log is a contiguous run of what was written, at the
   positions the appends returned (no holes, duplicates, reordering or
   invented records); the segments a GC deleted before it returned stay
   deleted; a power loss right after recovery changes nothing (recovering
   twice gives the same bytes); appending after recovery works and survives
   a clean reopen.

Recovery is a deterministic function of the disk image, so states with
the same image are recovered once and checked against each state's own
acknowledgements. A moment followed by an acknowledgement with no syscall
between them holds the same disk with fewer acknowledgements: ``explore``
crashes only the later one, except for what can happen only during the
syscall itself (a SIGKILL tearing the write in flight).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..config import WalConfig
from ..position import Position
from ..record import Record
from ..wal import Wal
from .faultfs import (
    POWER_LOSS,
    PROCESS_CRASH,
    CrashSpec,
    FaultFS,
    SimulatedCrash,
    torn_write_points,
)
from .workload import (
    POLICIES,
    WORKLOADS,
    Acks,
    Moment,
    Step,
    WorkloadRun,
    make_record,
    record_index,
    run_threaded_workload,
    run_workload,
    run_writer_workload,
    workload_config,
)

# -- crash states -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrashState:
    """One way to crash at one moment, and which acknowledgements it must keep."""

    moment: Moment
    spec: CrashSpec
    process: bool  # a process crash (SIGKILL): returned records must survive, under every policy

    @property
    def required(self) -> frozenset[int]:
        """The records this crash must not lose."""
        return self.moment.returned if self.process else self.moment.durable

    @property
    def during_call(self) -> bool:
        """A crash inside the moment's syscall (a SIGKILL tearing the write), not after it returned."""
        return self.process and self.spec.torn is not None

    def describe(self) -> str:
        c = self.moment.call
        kind = "process crash" if self.process else "power loss"
        if c.op == "ack":
            return f"{kind} right after {self.moment.note} (syscall {c.n} was the last) [{self.spec.label()}]"
        return f"{kind} after syscall {c.n} ({c.op} {os.path.basename(c.path)}) [{self.spec.label()}]"


def _frame_ends(data: bytes) -> list[int]:
    """Where whole frames (or the segment header) end inside one write, relative to its start."""
    from ..codec import frame_end

    ends, off = [], 0
    while off < len(data):
        e = frame_end(data, off, len(data))
        if e < 0:
            break
        ends.append(e)
        off = e
    return ends


def crash_variants(
    m: Moment, *, every: int = 0, rng: random.Random | None = None, extra_tears: int = 0, all_drops: bool = False
) -> Iterator[CrashState]:
    """Every crash state derived from moment ``m`` (see the module docstring).

    ``every``: also tear the last write at every ``every``-th byte;
    ``extra_tears``: that many random tear points besides the fixed samples;
    ``all_drops``: write-back out of order exhaustively -- every unsynced write
    dropped alone, every pair of the last six, and a drop beside a torn last
    write -- instead of three sampled drops.
    """
    yield CrashState(m, POWER_LOSS, False)
    pending = m.fs.pending_ops()
    p = len(pending)
    for keep in sorted({p // 2, p - 1, p} - {0}) if p else ():
        yield CrashState(m, CrashSpec(keep_ops=keep), False)
    last = pending[-1] if pending else None
    tears: list[int] = []
    if last is not None and last[0] == "w":
        _, off, data = last  # type: ignore[misc]
        tears = torn_write_points(off, data, frame_ends=_frame_ends(data), every=every)
        if rng is not None and len(data) > 2:
            tears = sorted(set(tears) | {rng.randrange(1, len(data)) for _ in range(extra_tears)})
        for t in tears:
            yield CrashState(m, CrashSpec(keep_ops=p - 1, torn=t), False)
        zero_at = sorted({0, tears[0] if tears else 0, tears[len(tears) // 2] if tears else 0})
        for t in zero_at:
            yield CrashState(m, CrashSpec(keep_ops=p - 1, torn=t, zero_fill=True), False)
    if p:
        yield CrashState(m, CrashSpec(keep_ops=0, zero_fill=True), False)
    yield from _out_of_order(m, pending, all_drops)
    dir_ops = len(m.fs.pending_dir_ops())
    for k in range(1, dir_ops + 1):
        yield CrashState(m, CrashSpec(keep_ops=0, keep_dir_ops=k), False)
        yield CrashState(m, CrashSpec(keep_ops=None, keep_dir_ops=k), False)
    # Process crashes (SIGKILL): the page cache keeps what the process wrote, still unsynced, so the
    # Explorer's power loss after recovery finds what recovery trusted without making it durable.
    yield CrashState(m, PROCESS_CRASH, True)
    if m.call.op == "append" and last is not None and last[0] == "w":
        # SIGKILL during the write itself: a prefix of it may have landed.
        for t in tears:
            yield CrashState(m, replace(PROCESS_CRASH, keep_ops=p - 1, torn=t), True)


def _out_of_order(m: Moment, pending: list[Any], exhaustive: bool) -> Iterator[CrashState]:
    """Write-back out of order: unsynced writes lost while later ones landed (holes)."""
    p = len(pending)
    writes = [i for i, op in enumerate(pending[:-1]) if op[0] == "w"]  # the last one has nothing after it
    if not exhaustive:
        for i in sorted({0, p // 2 - 1, p - 2} & set(writes)):
            yield CrashState(m, CrashSpec(keep_ops=None, drop=(i,)), False)
        return
    for i in writes:
        yield CrashState(m, CrashSpec(keep_ops=None, drop=(i,)), False)
        yield CrashState(m, CrashSpec(keep_ops=None, drop=(i,), keep_dir_ops=None), False)
    for pair in itertools.combinations(writes[-6:], 2):
        yield CrashState(m, CrashSpec(keep_ops=None, drop=pair), False)
    if p >= 2 and pending[-1][0] == "w":
        for i in writes[-3:]:
            yield CrashState(m, CrashSpec(keep_ops=p - 1, torn=len(pending[-1][2]) // 2, drop=(i,)), False)


# -- recovery and invariants ------------------------------------------------------------------


class InvariantViolation(AssertionError):
    """A crash state broke a durability or prefix invariant."""


@dataclass
class Recovered:
    """What recovery made of one disk image (cached per image): a run of the log order."""

    first: int  # rank (in log order) of the first recovered record
    count: int  # records recovered
    repaired: bool  # recovery changed the files (a crash inside it is worth trying)
    segments: tuple[int, ...] = ()  # the segment files present after recovery


def read_all(wal: Wal) -> list[tuple[Record, Position]]:
    with wal.read_from(Position(0, 0)) as reader:
        return [(Record(bytes(r.key), bytes(r.value), r.tombstone, r.ttl, r.compression), p) for r, p in reader]


@dataclass
class Stats:
    states: int = 0
    images: int = 0
    recovery_crashes: int = 0
    lost: int = 0
    runs: int = 0

    def add(self, other: Stats) -> None:
        self.states += other.states
        self.images += other.images
        self.recovery_crashes += other.recovery_crashes
        self.lost += other.lost
        self.runs += other.runs


class Explorer:
    """Recovers crash states of one workload run and checks the invariants."""

    def __init__(self, run: WorkloadRun):
        self.run = run
        self.stats = Stats(runs=1)
        self.order = run.log_order()
        self.rank = {i: r for r, i in enumerate(self.order)}
        self._cache: dict[object, Recovered] = {}

    def check(self, state: CrashState) -> Recovered:
        """Raise InvariantViolation (with the state described) if ``state`` breaks an invariant."""
        self.stats.states += 1
        post = state.moment.fs.crash(state.spec)
        image = post.image()
        # After a process crash the same visible files can hold unsynced bytes: recovery must
        # make those durable, so such a state is its own case (what a power loss would leave).
        key = (image, post.crash().image()) if state.spec.page_cache else image
        rec = self._cache.get(key)
        try:
            if rec is None:
                rec = self._recover(post, image)
                self._cache[key] = rec
                self.stats.images += 1
            self._check_acks(state, rec)
            self._check_gc(state, rec)
        except InvariantViolation as exc:
            raise InvariantViolation(f"{self.run.name}: {state.describe()}: {exc}") from None
        except Exception as exc:
            raise InvariantViolation(f"{self.run.name}: {state.describe()}: {type(exc).__name__}: {exc}") from exc
        return rec

    def _recover(self, post: FaultFS, image: object) -> Recovered:
        cfg = self.run.config
        wal, _info = Wal.open(cfg, layer=post)
        got = read_all(wal)
        after_recovery = post.image()
        # Recovering twice gives the same bytes: a power loss right after recovery
        # must find everything recovery did already durable.
        again_fs = post.crash()
        wal.close()
        rec = self._check_prefix(got, repaired=after_recovery != image)
        rec.segments = _segments(post, cfg)
        if again_fs.image() != after_recovery:
            raise InvariantViolation("recovery's repairs were not durable: a power loss right after it undid them")
        again, info2 = Wal.open(cfg, layer=again_fs)
        try:
            got2 = read_all(again)
            if got2 != got:
                raise InvariantViolation(f"second recovery read {len(got2)} records, first read {len(got)}")
            if again_fs.image() != after_recovery:
                raise InvariantViolation("second recovery changed the files the first one left")
            if info2.bytes_truncated:
                raise InvariantViolation(f"second recovery truncated {info2.bytes_truncated} bytes")
            # Appending after recovery works and survives a clean reopen.
            extra = Record.put(b"after-recovery", b"x" * 40)
            pos = again.append(extra)
            if got and pos <= got[-1][1]:
                raise InvariantViolation(f"append after recovery went to {pos}, not after the recovered tail")
        finally:
            again.close()
        third, info3 = Wal.open(cfg, layer=again_fs)
        try:
            got3 = read_all(third)
        finally:
            third.close()
        if got3 != got + [(extra, pos)] or info3.bytes_truncated:
            raise InvariantViolation(
                f"after append + clean close: {len(got3)} records (expected {len(got) + 1}), "
                f"{info3.bytes_truncated} bytes truncated"
            )
        return rec

    def _check_prefix(self, got: list[tuple[Record, Position]], repaired: bool) -> Recovered:
        """The recovered records are one contiguous run of the log order, identical, where appends put them."""
        run = self.run
        if not got:
            return Recovered(0, 0, repaired)
        ranks = []
        for r, p in got:
            i = record_index(r)
            if i >= len(run.records) or i not in self.rank:
                raise InvariantViolation(f"recovered record {i} at {p}, only {len(run.records)} were written")
            if r != run.records[i]:
                raise InvariantViolation(f"record {i} at {p} differs from what was appended")
            known = run.positions[i] if i < len(run.positions) else None
            if known is not None and known != p:
                raise InvariantViolation(f"record {i} recovered at {p}, its append returned {known}")
            ranks.append(self.rank[i])
        first = ranks[0]
        if ranks != list(range(first, first + len(ranks))):
            raise InvariantViolation(
                f"recovered records are not one contiguous run of the log: {_runs([self.order[k] for k in ranks])}"
            )
        return Recovered(first, len(ranks), repaired)

    def _check_acks(self, state: CrashState, rec: Recovered) -> None:
        """Every acknowledged record not in a segment a started GC may delete is recovered."""
        floor = state.moment.gc_floor
        positions = self.run.positions
        required = []
        for i in state.required:
            p = positions[i]
            if p is None or p.segment_id >= floor:
                required.append(self.rank[i])
        if not required:
            return
        lo, hi = rec.first, rec.first + rec.count
        missing = [r for r in required if not lo <= r < hi]
        if missing:
            self.stats.lost += len(missing)
            raise InvariantViolation(
                f"lost {len(missing)} acknowledged records (e.g. record {self.order[missing[0]]}): recovered "
                f"{rec.count} records from rank {lo}, {len(required)} acknowledged (GC floor: segment {floor})"
            )

    def _check_gc(self, state: CrashState, rec: Recovered) -> None:
        """The segments a GC deleted before it returned are still gone after the crash and recovery.

        ``delete_segments_before`` fsyncs the directory after each unlink before it
        returns: a deleted segment that comes back (its unlink lost with the
        directory's unsynced entries) would hand records the application had
        discarded back to readers, and a later GC would have to delete it again.
        """
        done = state.moment.gc_done
        back = [s for s in rec.segments if s < done]
        if back:
            raise InvariantViolation(
                f"segment {back[0]} is back after recovery ({len(back)} in all), though the GC of the segments "
                f"before {done} that deleted it had returned"
            )

    def check_recovery_crashes(self, state: CrashState) -> int:
        """Crash recovery itself at each of its syscalls (power loss and process crash); recover again.

        The second recovery must read what an uninterrupted one reads. Returns the states explored.
        """
        expected = self.check(state)
        cfg = self.run.config
        n, k = 0, 0
        while True:
            trial = state.moment.fs.crash(state.spec)
            trial.crash_after(k)
            try:
                wal, _ = Wal.open(cfg, layer=trial)
            except SimulatedCrash:
                for post, how in ((trial.crash(), "power loss"), (trial.process_crash(), "process crash")):
                    n += 1
                    again, _ = Wal.open(cfg, layer=post)
                    try:
                        got = read_all(again)
                    finally:
                        again.close()
                    if how == "power loss" and state.spec.page_cache:
                        # The killed predecessor's unsynced writes may go too: what the policy made
                        # durable must stay, and the log must still be one run of what was written.
                        try:
                            after = self._check_prefix(got, repaired=False)
                            after.segments = _segments(post, cfg)
                            self._check_acks(CrashState(state.moment, POWER_LOSS, False), after)
                            self._check_gc(state, after)
                        except InvariantViolation as exc:
                            raise InvariantViolation(
                                f"{self.run.name}: {state.describe()}: power loss at syscall {k + 1} of recovery: {exc}"
                            ) from None
                        continue
                    firsts = self.rank[record_index(got[0][0])] if got else 0
                    if (len(got), firsts if got else 0) != (expected.count, expected.first if expected.count else 0):
                        raise InvariantViolation(
                            f"{self.run.name}: {state.describe()}: {how} at syscall {k + 1} of recovery: "
                            f"recovered {len(got)} records, an uninterrupted recovery {expected.count}"
                        ) from None
                k += 1
                continue
            trial.clear_faults()  # recovery finished before syscall k + 1
            wal.close()
            self.stats.recovery_crashes += n
            return n


def _segments(layer: FaultFS, config: WalConfig) -> tuple[int, ...]:
    """The segment ids whose files are in the log directory of ``layer``."""
    from ..segment import segment_ids

    return tuple(segment_ids(layer.listdir(os.fspath(config.dir))))


def _runs(idx: list[int]) -> str:
    """``[1, 2, 3, 7, 8]`` as ``1..3, 7..8``."""
    out: list[str] = []
    start = idx[0]
    for k, a in enumerate(idx):
        if k + 1 == len(idx) or idx[k + 1] != a + 1:
            out.append(f"{start}..{a}" if start != a else str(start))
            if k + 1 < len(idx):
                start = idx[k + 1]
    return ", ".join(out[:8]) + (" ..." if len(out) > 8 else "")


def explore(
    run: WorkloadRun,
    *,
    every: int = 0,
    extra_tears: int = 0,
    seed: int = 0,
    recovery_crash_every: int = 0,
    all_drops: bool = False,
) -> Stats:
    """Check every crash state of ``run``; raises InvariantViolation at the first broken one.

    ``recovery_crash_every``: for every n-th state whose recovery repaired something,
    also crash that recovery at each of its syscalls (0: never).

    A moment followed by one on the same snapshot (an acknowledgement, no syscall
    between them) and the same GC floor holds the same disk with no more
    acknowledgements: every crash after its syscall is checked, more strictly, at
    the later moment, so here only the crashes during the syscall itself are.
    """
    ex = Explorer(run)
    rng = random.Random(seed)
    repaired = 0
    moments = run.moments
    for k, m in enumerate(moments):
        later = moments[k + 1] if k + 1 < len(moments) else None
        covered = later is not None and later.fs is m.fs and later.gc_floor == m.gc_floor
        for state in crash_variants(m, every=every, rng=rng, extra_tears=extra_tears, all_drops=all_drops):
            if covered and not state.during_call:
                continue
            rec = ex.check(state)
            if recovery_crash_every and rec.repaired:
                repaired += 1
                if repaired % recovery_crash_every == 0:
                    ex.check_recovery_crashes(state)
    return ex.stats


__all__ = [
    "POLICIES",
    "WORKLOADS",
    "Acks",
    "CrashState",
    "Explorer",
    "InvariantViolation",
    "Moment",
    "Stats",
    "Step",
    "WorkloadRun",
    "crash_variants",
    "explore",
    "make_record",
    "read_all",
    "record_index",
    "run_threaded_workload",
    "run_workload",
    "run_writer_workload",
    "workload_config",
]
