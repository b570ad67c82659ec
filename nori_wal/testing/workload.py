"""Workloads for crash-state exploration: drive a Wal on a FaultFS and snapshot it at every syscall.

``run_workload`` (one thread), ``run_threaded_workload`` (threads sharing one
Wal) and ``run_writer_workload`` (the writer process's server loop) run
``Step``s (appends, batch appends, syncs, GC, clean close + reopen) and return
a ``WorkloadRun``: a ``Moment`` after every syscall that can change what a
crash leaves (``MUTATING_OPS``), each holding the layer's snapshot and what
had been acknowledged at that instant (``Acks``); and another at the instant
each append (or GC) returns. ``crashsim`` turns the moments into crash states
and checks them. ``WORKLOADS`` and ``workload_config`` are the ready-made ones
the crash suites run.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..config import FsyncPolicy, WalConfig
from ..position import Position
from ..record import Compression, Record
from ..wal import Wal
from .faultfs import (
    MUTATING_OPS,
    FaultFS,
    Syscall,
)

# -- workloads --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One workload action.

    kind: "append" (``n`` single appends), "batch" (one append_batch of ``n``),
    "sync", "gc" (delete_segments_before the current position), "reopen"
    (clean close, then open again on the same layer).
    ``size``: largest value size in bytes (values are 0..size bytes, random).
    """

    kind: str
    n: int = 1
    size: int = 120


def make_record(index: int, rng: random.Random, size: int) -> Record:
    """A record whose key names its index; varied values, TTLs, tombstones and compression."""
    key = b"r%07d" % index
    kind = rng.random()
    if kind < 0.08:
        return Record.delete(key)
    value = rng.randbytes(rng.randint(0, size)) if rng.random() < 0.5 else bytes([index % 251]) * rng.randint(0, size)
    if kind < 0.18:
        return Record.put_with_ttl(key, value, timedelta(milliseconds=rng.randint(0, 10**9)))
    if kind < 0.26:
        return Record.put(key, value).with_compression(Compression.LZ4)
    if kind < 0.32:
        return Record.put(key, value).with_compression(Compression.ZSTD)
    return Record.put(key, value)


def record_index(record: Record) -> int:
    key = bytes(record.key)
    if len(key) != 8 or not key.startswith(b"r") or not key[1:].isdigit():
        raise AssertionError(f"recovered a record that was never written: key {key!r}")
    return int(key[1:])


@dataclass
class Moment:
    """The layer and the acknowledgements right after one syscall of a workload, or one acknowledgement.

    ``call.op`` is "ack" for a moment taken as an append or a GC returned (no
    syscall: ``call.n`` is the count so far, ``note`` says what returned).
    """

    call: Syscall
    fs: FaultFS
    returned: frozenset[int]  # records whose append returned: they survive a process crash
    durable: frozenset[int]  # records promised to survive a power loss
    gc_floor: int  # segments below this id may be gone (a GC was started)
    gc_done: int = 0  # segments below this id must be gone (a GC that deleted them returned)
    note: str = ""


class Acks:
    """What has been acknowledged so far; shared by the workload's threads and the snapshot hook.

    Given the workload's layer and moment list (as ``_start_run`` does), every
    acknowledgement also records a Moment at the instant it is made, with the
    layer held still so no other thread's syscall slips in between. Without
    it, an append that returned before its fsync and paid it at the start of
    its next call was never caught: every syscall moment found it durable.
    """

    def __init__(self, durable_acks: bool, fs: FaultFS | None = None, moments: list[Moment] | None = None):
        self._lock = threading.Lock()
        self._durable_acks = durable_acks
        self.returned: set[int] = set()
        self.durable: set[int] = set()
        self.gc_floor = 0
        self.gc_done = 0
        self._fs = fs
        self._moments = moments
        self._observed = 0  # syscalls of ``fs`` that completed (each one reached ``observe``)
        self._last = (0, 0)  # (fs.syscalls, _observed) when the last moment was taken

    def observe(self, layer: FaultFS, call: Syscall) -> None:
        """The layer's observer: a moment after every mutating syscall."""
        self._observed += 1
        if call.op in MUTATING_OPS and self._moments is not None:
            self._moments.append(self.moment(call, layer))
            self._last = (layer.syscalls, self._observed)

    def ack(self, indices: Iterable[int]) -> None:
        """These appends returned (durable too unless the policy is Os)."""
        idx = list(indices)
        with self._held():
            with self._lock:
                self.returned.update(idx)
                if self._durable_acks:
                    self.durable.update(idx)
            self._ack_moment(
                f"the append of record {idx[0]}"
                if len(idx) == 1
                else f"the append of records {idx[0]}..{idx[-1]}"
                if idx
                else "an empty append"
            )

    def all_durable(self) -> None:
        """A sync() or a clean close returned: everything returned before it is durable."""
        with self._lock:
            self.durable.update(self.returned)

    def start_gc(self, segment_id: int) -> None:
        with self._lock:
            self.gc_floor = max(self.gc_floor, segment_id)

    def end_gc(self, segment_id: int) -> None:
        """``delete_segments_before`` (of ``segment_id``'s position) returned: the segments below stay gone."""
        with self._held():
            with self._lock:
                self.gc_done = max(self.gc_done, segment_id)
            self._ack_moment(f"a GC of the segments before {segment_id}")

    def moment(self, call: Syscall, fs: FaultFS, note: str = "") -> Moment:
        return self._moment(call, fs.snapshot(), note)

    def _moment(self, call: Syscall, snapshot: FaultFS, note: str) -> Moment:
        with self._lock:
            return Moment(
                call, snapshot, frozenset(self.returned), frozenset(self.durable), self.gc_floor, self.gc_done, note
            )

    def _held(self) -> contextlib.AbstractContextManager[object]:
        return self._fs.held() if self._fs is not None else contextlib.nullcontext()

    def _ack_moment(self, what: str) -> None:
        """A moment right after ``what`` returned (the caller holds the layer still)."""
        fs, moments = self._fs, self._moments
        if fs is None or moments is None:
            return
        call = Syscall(fs.syscalls, "ack", fs.last_written_path() or "")
        calls, observed = self._last
        if moments and fs.syscalls - calls == self._observed - observed:
            # Every syscall since the last moment completed, and none changed the disk (a mutating
            # one would have taken a moment; one that failed -- an injected fault -- may have left
            # a partial write): share that snapshot. ``explore`` sees the two moments hold one
            # disk and crashes only this one, which requires more.
            m = self._moment(call, moments[-1].fs, f"{what} returned")
        else:
            m = self.moment(call, fs, f"{what} returned")
        moments.append(m)
        self._last = (fs.syscalls, self._observed)


@dataclass
class WorkloadRun:
    """What a workload wrote (by record index) and every snapshot it took."""

    name: str
    config: WalConfig
    records: list[Record] = field(default_factory=list)
    positions: list[Position | None] = field(default_factory=list)
    moments: list[Moment] = field(default_factory=list)

    def log_order(self) -> list[int]:
        """Record indices in the order the log holds them (by the positions appends returned)."""
        placed = sorted((p, i) for i, p in enumerate(self.positions) if p is not None)
        rest = [i for i, p in enumerate(self.positions) if p is None]
        rest += list(range(len(self.positions), len(self.records)))
        return [i for _, i in placed] + rest


def _start_run(
    name: str, config: WalConfig, layer: type[FaultFS], records: list[Record]
) -> tuple[FaultFS, WorkloadRun, Acks]:
    """A fresh ``layer()`` watched at every mutating syscall and every ack, and the run recording on it.

    ``records``: known in advance (threaded workloads fill their positions as acks
    arrive), or empty (``run_workload`` appends them step by step).
    """
    fs = layer()
    run = WorkloadRun(name, config, records, [None] * len(records))
    acks = Acks(config.fsync_policy.kind != "os", fs, run.moments)
    fs.observe(acks.observe)
    return fs, run, acks


def run_workload(
    name: str, config: WalConfig, steps: Sequence[Step], seed: int = 0, layer: type[FaultFS] = FaultFS
) -> WorkloadRun:
    """Run ``steps`` (one thread) on a fresh ``layer()``, snapshotting after every mutating syscall."""
    rng = random.Random(seed)
    fs, run, acks = _start_run(name, config, layer, [])
    wal, _ = Wal.open(config, layer=fs)
    try:
        for step in steps:
            if step.kind in ("append", "batch"):
                first = len(run.records)
                recs = [make_record(first + i, rng, step.size) for i in range(step.n)]
                run.records.extend(recs)
                if step.kind == "append":
                    for i, rec in enumerate(recs):
                        run.positions.append(wal.append(rec))
                        acks.ack((first + i,))
                else:
                    run.positions.extend(wal.append_batch(recs))
                    acks.ack(range(first, first + len(recs)))
            elif step.kind == "sync":
                wal.sync()
                acks.all_durable()
            elif step.kind == "gc":
                pos = wal.current_position()
                acks.start_gc(pos.segment_id)
                wal.delete_segments_before(pos)
                acks.end_gc(pos.segment_id)
            elif step.kind == "reopen":
                wal.close()
                acks.all_durable()
                wal, _ = Wal.open(config, layer=fs)
            else:
                raise ValueError(f"unknown step {step.kind!r}")
        wal.close()
        acks.all_durable()
    finally:
        wal.close()
    return run


def _append_from_threads(
    log: Any, run: WorkloadRun, acks: Acks, threads: int, appends: int, batch: int
) -> list[BaseException]:
    """``threads`` threads each make ``appends`` appends of ``batch`` records of ``run`` through ``log``
    (a Wal or a WalClient), recording positions and acks; returns the errors they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        try:
            start.wait()
            for j in range(appends):
                first = (t * appends + j) * batch
                idx = range(first, first + batch)
                if batch == 1:
                    pos = [log.append(run.records[first])]
                else:
                    pos = log.append_batch([run.records[i] for i in idx])
                for i, p in zip(idx, pos):
                    run.positions[i] = p
                acks.ack(idx)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return errors


def run_threaded_workload(
    name: str,
    config: WalConfig,
    *,
    threads: int = 4,
    appends: int = 15,
    batch: int = 1,
    size: int = 150,
    seed: int = 0,
    layer: type[FaultFS] = FaultFS,
) -> WorkloadRun:
    """``threads`` threads each make ``appends`` appends of ``batch`` records (group commit under test).

    The interleaving differs from run to run; the invariants hold for every one.
    """
    rng = random.Random(seed)
    fs, run, acks = _start_run(
        name, config, layer, [make_record(i, rng, size) for i in range(threads * appends * batch)]
    )
    wal, _ = Wal.open(config, layer=fs)
    try:
        errors = _append_from_threads(wal, run, acks, threads, appends, batch)
    finally:
        wal.close()
    if errors:
        raise errors[0]
    acks.all_durable()
    return run


def run_writer_workload(
    name: str,
    config: WalConfig,
    *,
    producers: int = 4,
    appends: int = 12,
    batch: int = 1,
    size: int = 150,
    seed: int = 0,
    layer: type[FaultFS] = FaultFS,
) -> WorkloadRun:
    """The writer process's loop (group commit, flush thread, acks over ZeroMQ) on a FaultFS.

    The ``WriterServer`` runs in a thread of this process on the in-memory layer;
    ``producers`` threads append through ``WalClient``. A record counts as
    acknowledged once its client call returned, so a writer that acknowledged
    before its fsync would show up as a lost record after a power loss, which a
    SIGKILL can never show (the kernel keeps the page cache). ``config.dir``
    must be a real directory: the endpoint file and the ipc socket live there.
    """
    from ..client import WalClient
    from ..writer_proc.server import WriterSpec, open_writer

    rng = random.Random(seed)
    fs, run, acks = _start_run(
        name, config, layer, [make_record(i, rng, size) for i in range(producers * appends * batch)]
    )
    server = open_writer(WriterSpec(config=config, layer=fs))
    wake_r, wake_w = os.pipe()
    codes: list[int] = []
    loop = threading.Thread(target=lambda: codes.append(server.serve(wake_r)), name="writer-loop")
    loop.start()
    client = WalClient(server.endpoint, timeout=30)
    try:
        errors = _append_from_threads(client, run, acks, producers, appends, batch)
    finally:
        client.close()
        server.stop("workload done")
        os.write(wake_w, b"x")
        loop.join(60)
        os.close(wake_r)
        os.close(wake_w)
    if errors:
        raise errors[0]
    if codes != [0]:
        raise AssertionError(f"the writer loop ended with {codes}")
    acks.all_durable()
    return run


# -- ready-made workloads ---------------------------------------------------------------------

POLICIES = {"always": FsyncPolicy.always(), "batch": FsyncPolicy.batch(1e-6), "os": FsyncPolicy.os()}

WORKLOADS: dict[str, list[Step]] = {
    # Single appends of small records across several 4 KiB segments (rolls).
    "appends": [Step("append", 70, 160)],
    # Batches, some large enough to span a roll within one batch.
    "batches": [
        Step("batch", 6, 300),
        Step("batch", 1, 3000),
        Step("batch", 12, 200),
        Step("batch", 3, 1500),
        Step("batch", 9, 100),
        Step("batch", 2, 3500),
    ],
    # Appends, GC of several segments while more are written, a clean close + reopen, explicit syncs.
    "gc": [
        Step("append", 80, 150),
        Step("gc"),
        Step("batch", 8, 200),
        Step("sync"),
        Step("append", 20, 150),
        Step("reopen"),
        Step("append", 20, 150),
        Step("gc"),
        Step("append", 6, 150),
    ],
}


def workload_config(directory: str, policy: str, max_segment_size: int = 4096) -> WalConfig:
    return WalConfig(dir=directory, max_segment_size=max_segment_size, fsync_policy=POLICIES[policy])


__all__ = [
    "Acks",
    "Moment",
    "POLICIES",
    "Step",
    "WORKLOADS",
    "WorkloadRun",
    "make_record",
    "record_index",
    "run_threaded_workload",
    "run_workload",
    "run_writer_workload",
    "workload_config",
]
