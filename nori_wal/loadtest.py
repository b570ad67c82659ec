"""The contention load benchmark: the main job (``nori-wal load``, ``scripts/load.py``).

Spawns one writer process per fsync policy and 1, 2, 4, ... producer processes
(multiprocessing, ``spawn``) that append 1 KB records through the public client
API, and prints a contention table: acked records/s, MiB/s, p50/p99 ack latency,
each row as a multiple of F and of SQLite; ``group``: records per group commit
(per fsync; per write under Os), from the writer's INFO counters and the
yardstick's own count; ``cpu us``: CPU (user + system, every thread) per acked
record, the producers' plus the server process's (/proc), which says where a
CPU-bound row's ceiling is. Every cell runs in the same run as its
peers, because on a virtual disk fdatasync swings from 0.2 to 4 ms between runs:
only same-run ratios mean anything.

Modes (``--modes``), each producer:
  sync       ``WalClient.append`` one record at a time (one append in flight);
  pipelined  ``AsyncWalClient``: ``--depth`` (32) coroutines under ``asyncio.gather``,
             each awaiting ``append`` in a loop, so 32 appends are always in flight;
  submit     ``WalClient.submit`` (the sync client's pipelined call): ``--depth`` appends
             always in flight, each ``.result()`` collected oldest first (``--full`` only,
             or ``--modes``);
  batch      ``WalClient.append_batch`` of ``--batch-size`` (100) records.
Records are ``Record`` objects framed by the client on every call (framing and
CRC32C are part of the measured cost; nothing is pre-encoded). MiB/s counts the
1 KB values; the frames add the key and a few header bytes.

Measured in the same run, beside the cells:
  F          one writer's 1 KB ``os.write`` + ``os.fdatasync`` per second (a 1 s loop),
             at the start and again at the end to show the disk's drift;
  SQLite     WAL mode, ``synchronous=FULL``, one INSERT of a 1 KB blob per transaction,
             the same process counts (what ``../shared/bench/sqlite_peer.py`` does);
  yardstick  the ideal group-commit toy, REIMPLEMENTED here (not the shared script,
             which an installed package cannot rely on): one ROUTER writer, blocks for
             a message, drains what is pending, one ``os.write``, one ``fdatasync``
             (``always``) or none (``none``), acks; producers send pre-framed 1 KB
             records (or ``--batch-size`` of them) synchronously. Same logic as
             ``../shared/bench/ideal_group_commit.py``;
  Redis      AOF ``appendfsync always``, redis-py ``XADD`` of 1 KB, synchronous,
             pipelined (``--depth`` per round trip) and ``--batch-size`` per round trip,
             when ``redis-server`` and redis-py are installed (said so when not), as
             ``../shared/bench/redis_peer.py`` does. With ``--full`` also ``everysec``
             beside ``batch`` (it acks BEFORE its fsync: weaker) and ``no`` beside ``os``.

Cells are ordered by producer count, every system at N before N+1, so the peers
and nori-wal see the same disk weather. Within one N each cell runs in ``--slices``
(2) slices of equal length, the cells in order for the first slice and in reverse
for the next (A B C, C B A, ...): the disk and the machine drift within seconds,
and interleaving gives every system the early and the late turns, so a drift
does not land on one side of a ratio. Producer processes form one pool started
before the first clock and reused by every cell; each slice's producers set up
(connect, one warm-up call that is not counted), report ready, and start together
on an ``Event``; the parent sets one deadline for them all (``seconds`` after the
``Event``, on the system-wide monotonic clock), so a producer that wakes late
runs for less time instead of running on alone. Each counts its acked records
and per-call ack latencies, notes when it started and when its last call ended,
and returns them through a ``Queue``. A slice's rate is its producers' acked
records over the window they really shared, from the first start to the last
end (``slice_rate``; not the sum of each producer's rate over its own window,
which overstated N=64 by 12% when wake-ups were staggered); a cell's, the mean
of its slices'. Every system is timed by the same loop and the same rule.

With matplotlib installed a PNG of throughput against producers is written too.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

RECORD_BYTES = 1024  # value bytes per record
MODES = ("sync", "pipelined", "submit", "batch")
DEFAULT_MODES = ("sync", "pipelined", "batch")
POLICIES = ("always", "batch", "os")
PEERS = ("sqlite", "yardstick", "redis")
DEFAULT_PRODUCERS = (1, 2, 4, 8, 16, 32, 64)  # the targets are for N <= 32; 64 shows what is past them
QUICK_PRODUCERS = (1, 8)
DEFAULT_SECONDS = 2.0  # per cell
DEFAULT_SLICES = 2  # a cell's seconds are split into this many interleaved slices
QUICK_SECONDS = 0.5
FULL_SECONDS = 3.0
SETUP_TIMEOUT = 60.0  # seconds for a cell's producers to connect and warm up
CLIENT_TIMEOUT = 30.0  # seconds, WalClient(timeout=...)
REDIS_FSYNC = {"always": "always", "batch": "everysec", "os": "no"}
YARD_FSYNC = {"always": "always", "os": "none"}

Task = dict[str, Any]
# One producer's slice: acked records, start and end (time.monotonic(): one clock for every process
# on the machine), per-call latencies (array("d") bytes, seconds), CPU seconds.
Numbers = tuple[int, float, float, bytes, float]
Timed = tuple[int, float, float, "array[float]"]  # what a runner returns: acked, start, end, latencies


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One measurement: ``system`` at ``producers`` processes in ``mode`` under ``policy``.

    system: "nori", "sqlite", "yardstick" or "redis"; policy: the nori policy the cell
    stands beside (always/batch/os); for peers ``detail`` says what they really ran.
    """

    system: str
    policy: str
    mode: str
    producers: int
    detail: str = ""


@dataclass
class CellResult:
    cell: Cell
    records_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    calls: int = 0
    error: str = ""
    group: float = 0.0  # records per group commit: per fsync (always, batch), per write (os); 0: not known
    cpu_us: float = 0.0  # CPU (user + system) per acked record: producers plus the server process; 0: not known

    @property
    def mib_per_s(self) -> float:
        return self.records_per_s * RECORD_BYTES / 2**20


@dataclass
class LoadReport:
    """Everything one run measured; printed as tables and ratios, optionally saved as JSON."""

    f_start: float = 0.0
    f_end: float = 0.0
    results: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def find(self, system: str, policy: str, mode: str, producers: int) -> CellResult | None:
        for r in self.results:
            c = r.cell
            if (c.system, c.policy, c.mode, c.producers) == (system, policy, mode, producers) and not r.error:
                return r
        return None


# -- pure helpers ------------------------------------------------------------------------------


def parse_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"], each checked against ``allowed``; raises ValueError naming the bad one."""
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in allowed:
            raise ValueError(f"unknown {what} {item!r}: choose from {', '.join(allowed)}")
    if not items:
        raise ValueError(f"no {what} given")
    return list(dict.fromkeys(items))


def parse_counts(text: str) -> list[int]:
    """``"1,2,8"`` -> [1, 2, 8]; every count must be a positive integer."""
    out = []
    for t in text.split(","):
        t = t.strip()
        if not t:
            continue
        if not t.isdigit() or int(t) < 1:
            raise ValueError(f"bad producer count {t!r}: use positive integers, e.g. 1,2,4,8")
        out.append(int(t))
    if not out:
        raise ValueError("no producer counts given")
    return list(dict.fromkeys(out))


def percentile_ms(sorted_s: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ascending seconds, in milliseconds; 0 when empty."""
    if not sorted_s:
        return 0.0
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1e3


def mode_label(mode: str, depth: int, batch_size: int) -> str:
    return {
        "sync": "sync",
        "pipelined": f"pipe x{depth}",
        "submit": f"submit x{depth}",
        "batch": f"batch({batch_size})",
    }[mode]


def plan_cells(
    producers: Sequence[int],
    policies: Sequence[str],
    modes: Sequence[str],
    peers: Sequence[str],
    full: bool,
    redis_ok: bool,
) -> list[Cell]:
    """The cells of a run, grouped by producer count (every system at N before N+1).

    Peers: SQLite FULL at every N; the yardstick beside Always sync and Os batch (the
    targets; with ``full`` also Always batch and Os sync); Redis beside Always (with
    ``full`` beside every policy, with the matching appendfsync), in every mode but
    ``submit`` (a nori-wal call: the ratios set Redis's pipelined rows beside it).
    """
    cells: list[Cell] = []
    for n in producers:
        if "sqlite" in peers:
            cells.append(Cell("sqlite", "-", "sync", n, "WAL synchronous=FULL, 1 row/txn"))
        for policy in policies:
            for mode in modes:
                cells.append(Cell("nori", policy, mode, n))
                yard = YARD_FSYNC.get(policy)
                wanted = {("always", "sync"), ("os", "batch")}
                if full:
                    wanted |= {("always", "batch"), ("os", "sync")}
                if "yardstick" in peers and yard and mode in ("sync", "batch") and (policy, mode) in wanted:
                    cells.append(Cell("yardstick", policy, mode, n, f"fsync {yard}"))
                if "redis" in peers and redis_ok and (policy == "always" or full) and mode != "submit":
                    cells.append(Cell("redis", policy, mode, n, f"appendfsync {REDIS_FSYNC[policy]}"))
    return cells


def slice_order(cells: Sequence[Cell], slices: int) -> list[tuple[Cell, int]]:
    """The order to run ``cells`` in: (cell, slice index) pairs.

    Cells with the same producer count (``plan_cells`` keeps them adjacent) take
    turns: all of them for slice 0, then in reverse for slice 1, and so on
    (A B C, C B A, A B C): a drift of the disk or the machine during one N is
    shared by every system instead of landing on whichever ran last.
    """
    order: list[tuple[Cell, int]] = []
    i = 0
    while i < len(cells):
        j = i
        while j < len(cells) and cells[j].producers == cells[i].producers:
            j += 1
        group = list(cells[i:j])
        for k in range(slices):
            order += [(c, k) for c in (group if k % 2 == 0 else group[::-1])]
        i = j
    return order


def peer_label(cell: Cell) -> str:
    if cell.system == "sqlite":
        return "sqlite FULL"
    if cell.system == "yardstick":
        return f"yardstick {YARD_FSYNC[cell.policy]}"
    if cell.system == "redis":
        return f"redis {REDIS_FSYNC[cell.policy]}"
    return cell.policy


HEADER = (
    f"{'producers':>9}  {'mode':<10}  {'policy':<16}  {'acked rec/s':>12}  {'MiB/s':>8}  "
    f"{'p50 ms':>8}  {'p99 ms':>8}  {'x F':>7}  {'x SQLite':>8}  {'group':>6}  {'cpu us':>6}"
)


def format_row(r: CellResult, f: float, sqlite: CellResult | None, depth: int, batch_size: int) -> str:
    c = r.cell
    name = c.policy if c.system == "nori" else peer_label(c)
    mode = mode_label(c.mode, depth, batch_size)
    if r.error:
        return f"{c.producers:>9}  {mode:<10}  {name:<16}  error: {r.error}"
    xf = r.records_per_s / f if f > 0 else 0.0
    xs = f"{r.records_per_s / sqlite.records_per_s:>8.2f}" if sqlite and sqlite.records_per_s > 0 else f"{'-':>8}"
    group = f"{r.group:>6.1f}" if r.group else f"{'-':>6}"
    cpu = f"{r.cpu_us:>6.1f}" if r.cpu_us else f"{'-':>6}"
    return (
        f"{c.producers:>9}  {mode:<10}  {name:<16}  {r.records_per_s:>12,.0f}  {r.mib_per_s:>8.2f}  "
        f"{r.p50_ms:>8.3f}  {r.p99_ms:>8.3f}  {xf:>7.2f}  {xs}  {group}  {cpu}"
    )


def _ratio(a: CellResult | None, b: CellResult | None) -> float | None:
    if a is None or b is None or b.records_per_s <= 0:
        return None
    return a.records_per_s / b.records_per_s


def ratio_lines(rep: LoadReport, depth: int, batch_size: int) -> list[str]:
    """The ratios issue 3 sets targets for, each with its target and whether this run met it."""
    out: list[str] = []

    def verdict(value: float | None, target: float, unit: str = "x") -> str:
        if value is None:
            return "n/a (not measured in this run)"
        shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.0%}"
        return f"{shown}  (target >= {target:g}{unit if unit == 'x' else ''}: {'met' if value >= target else 'MISSED'})"

    ns = sorted({r.cell.producers for r in rep.results})
    parts = []
    for n in ns:
        v = _ratio(rep.find("nori", "always", "sync", n), rep.find("yardstick", "always", "sync", n))
        if v is not None:
            parts.append(f"N={n} {v:.2f}x{'' if v >= 1 or n > 32 else '!'}")
    out.append(
        "Always sync / yardstick always, same N (target >= 1x for N <= 32, ! = missed): "
        + (", ".join(parts) if parts else "n/a (not measured in this run)")
    )
    sq8 = rep.find("sqlite", "-", "sync", 8)
    out.append("Always sync N=8 / SQLite FULL N=8: " + verdict(_ratio(rep.find("nori", "always", "sync", 8), sq8), 2))
    for mode in ("pipelined", "submit"):
        r8 = rep.find("nori", "always", mode, 8)
        if r8 is not None or mode == "pipelined":
            out.append(
                f"Always {mode_label(mode, depth, batch_size)} N=8 / SQLite FULL N=8: " + verdict(_ratio(r8, sq8), 10)
            )
    out.append(
        f"Always {mode_label('batch', depth, batch_size)} N=8 / SQLite FULL N=8: "
        + verdict(_ratio(rep.find("nori", "always", "batch", 8), sq8), 25)
    )
    osb = rep.find("nori", "os", "batch", 8)
    yb = rep.find("yardstick", "os", "batch", 8)
    if osb is None:
        out.append(f"Os {mode_label('batch', depth, batch_size)} N=8 MiB/s: n/a (not measured in this run)")
    else:
        met = "met" if osb.mib_per_s >= 150 else "MISSED"
        line = f"Os {mode_label('batch', depth, batch_size)} N=8: {osb.mib_per_s:.0f} MiB/s (target >= 150: {met})"
        if yb is not None and yb.mib_per_s > 0:
            line += f"; / yardstick --batch {batch_size} --fsync none ({yb.mib_per_s:.0f} MiB/s): " + verdict(
                osb.mib_per_s / yb.mib_per_s, 0.5, "%"
            )
        out.append(line)
    for policy in POLICIES:
        for mode in MODES:
            parts = []
            for n in ns:  # submit is a nori-wal client call: Redis's pipelined rows stand beside it
                rd = rep.find("redis", policy, "pipelined" if mode == "submit" else mode, n)
                v = _ratio(rep.find("nori", policy, mode, n), rd)
                if v is not None and rd is not None:
                    parts.append(f"N={n} {v:.2f}x")
            if parts:
                fs = REDIS_FSYNC[policy]
                out.append(
                    f"{policy} {mode_label(mode, depth, batch_size)} / Redis appendfsync {fs}: " + ", ".join(parts)
                )
    return out


# -- the disk probe ----------------------------------------------------------------------------


def measure_f(directory: str, seconds: float = 1.0) -> float:
    """F: 1 KB ``os.write`` + ``os.fdatasync`` per second on this disk, one writer, a ``seconds`` loop."""
    path = os.path.join(directory, "f.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        rec, n = os.urandom(RECORD_BYTES), 0
        start = time.perf_counter()
        end = start + seconds
        now = start
        while now < end:
            os.write(fd, rec)
            os.fdatasync(fd)
            n += 1
            now = time.perf_counter()
        return n / (now - start)
    finally:
        os.close(fd)
        os.unlink(path)


def describe_disk(directory: str) -> str:
    """``ext4 on /dev/vda`` for the mount holding ``directory`` (best effort, Linux)."""
    try:
        real = os.path.realpath(directory)
        best = ("", "?", "?")
        with open("/proc/mounts") as fh:
            for line in fh:
                dev, mnt, fstype = line.split()[:3]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
        return f"{best[1]} on {best[2]}"
    except OSError:
        return "unknown filesystem"


# -- producer processes (the pool) -------------------------------------------------------------

NOT_ACKED = object()  # what a timed op returns when its records were not acknowledged (SQLite: locked)


def _timed_loop(op: Callable[[Any], Any], arg: Any, per: int, end: float) -> Timed:
    """Call ``op(arg)`` until the shared deadline ``end``; returns (acked records, start, end, latencies s).

    Each call acknowledges ``per`` records unless it returns NOT_ACKED. Every
    system's op is the one call a user would make (``client.append``, a
    socket round trip, an INSERT), so no system pays for an extra wrapper.
    Times are ``time.monotonic()``, comparable across the producer processes.
    """
    lat: array[float] = array("d")
    acked = 0
    clock = time.monotonic
    start = t0 = clock()
    while t0 < end:
        missed = op(arg) is NOT_ACKED
        t1 = clock()
        if not missed:
            lat.append(t1 - t0)
            acked += per
        t0 = t1
    return acked, start, t0, lat


def _records(index: int, count: int) -> list[Any]:
    from .record import Record

    value = os.urandom(RECORD_BYTES)
    return [Record.put(b"p%04d-%06d" % (index, i), value) for i in range(count)]


def _run_nori(task: Task, ready: Callable[[], None], go: _Gate) -> Timed:
    from .client import WalClient

    mode = task["mode"]
    if mode == "pipelined":
        return asyncio.run(_run_nori_pipelined(task, ready, go))
    recs = _records(task["index"], task["batch_size"] if mode == "batch" else 1)
    client = WalClient(task["endpoint"], timeout=CLIENT_TIMEOUT)
    try:
        if mode == "submit":
            client.append(recs[0])  # warm-up: connects; not counted
            ready()
            return _submit_loop(client, recs[0], task["depth"], go.wait())
        op: Callable[[Any], Any] = client.append if mode == "sync" else client.append_batch
        arg = recs[0] if mode == "sync" else recs
        op(arg)  # warm-up: connects; not counted
        ready()
        return _timed_loop(op, arg, 1 if mode == "sync" else len(recs), go.wait())
    finally:
        client.close()


def _submit_loop(client: Any, rec: Any, depth: int, end: float) -> Timed:
    """Keep ``depth`` appends in flight with ``WalClient.submit`` until ``end``; latency = submit to result."""
    lat: array[float] = array("d")
    pending: deque[tuple[float, Any]] = deque()
    perf = time.monotonic
    start = now = perf()
    while now < end:
        while len(pending) < depth:
            pending.append((perf(), client.submit(rec)))
        t0, p = pending.popleft()
        p.result()
        now = perf()
        lat.append(now - t0)
        while pending and pending[0][1].done():  # collect every ack already here, then refill at once
            t0, p = pending.popleft()
            p.result()
            lat.append(now - t0)
    while pending:  # what is still in flight counts once acknowledged
        t0, p = pending.popleft()
        p.result()
        now = perf()
        lat.append(now - t0)
    return len(lat), start, now, lat


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _run_nori_pipelined(task: Task, ready: Callable[[], None], go: _Gate) -> Timed:
    from .client import AsyncWalClient

    depth = task["depth"]
    recs = _records(task["index"], depth)
    client = AsyncWalClient(task["endpoint"], timeout=CLIENT_TIMEOUT)
    try:
        await client.append(recs[0])  # warm-up: connects; not counted
        ready()
        end = go.wait()  # blocks the loop on purpose: nothing else runs yet
        lat: array[float] = array("d")
        start = time.monotonic()

        async def lane(rec: Any) -> int:
            n = 0
            t0 = time.monotonic()
            while t0 < end:
                await client.append(rec)
                t1 = time.monotonic()
                lat.append(t1 - t0)
                n += 1
                t0 = t1
            return n

        counts = await asyncio.gather(*(lane(r) for r in recs))
        return sum(counts), start, time.monotonic(), lat
    finally:
        await _maybe_await(client.close())


def _run_sqlite(task: Task, ready: Callable[[], None], go: _Gate) -> Timed:
    import sqlite3

    db = sqlite3.connect(task["path"], isolation_level=None, timeout=10.0)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA synchronous=FULL")
        blob = os.urandom(RECORD_BYTES)

        def op(row: tuple[bytes]) -> Any:
            try:
                return db.execute("INSERT INTO log(data) VALUES (?)", row)
            except sqlite3.OperationalError:  # "database is locked" past busy_timeout
                return NOT_ACKED

        ready()
        return _timed_loop(op, (blob,), 1, go.wait())
    finally:
        db.close()


def _yard_frame() -> bytes:
    import zlib

    body = os.urandom(RECORD_BYTES - 8)
    return len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body


def _run_yard(task: Task, ready: Callable[[], None], go: _Gate) -> Timed:
    import zmq

    per = task["batch_size"] if task["mode"] == "batch" else 1
    msg = _yard_frame() * per
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(CLIENT_TIMEOUT * 1000))
    try:
        sock.connect(task["endpoint"])

        def op(m: bytes) -> Any:
            sock.send(m)
            return sock.recv()

        op(msg)
        ready()
        return _timed_loop(op, msg, per, go.wait())
    finally:
        sock.close()
        ctx.term()


def _run_redis(task: Task, ready: Callable[[], None], go: _Gate) -> Timed:
    import redis

    r = redis.Redis(port=task["port"])
    blob = os.urandom(RECORD_BYTES)
    per = {"sync": 1, "pipelined": task["depth"], "submit": task["depth"], "batch": task["batch_size"]}[task["mode"]]
    try:
        fields = {"d": blob}
        op: Callable[[Any], Any]
        if per == 1:

            def op(f: dict[str, bytes]) -> Any:
                return r.xadd("log", f)  # type: ignore[arg-type]
        else:

            def op(f: dict[str, bytes]) -> Any:
                p = r.pipeline(transaction=False)
                for _ in range(per):
                    p.xadd("log", f)  # type: ignore[arg-type]
                return p.execute()

        r.ping()
        ready()
        return _timed_loop(op, fields, per, go.wait())
    finally:
        r.close()


_RUNNERS: dict[str, Callable[[Task, Callable[[], None], _Gate], Timed]] = {
    "nori": _run_nori,
    "sqlite": _run_sqlite,
    "yardstick": _run_yard,
    "redis": _run_redis,
}


def _worker_main(index: int, commands: Any, results: Any, go: Any, deadline: Any) -> None:
    """A pooled producer process: run each task it is given, report ready, wait for go, report numbers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    gate = _Gate(go, deadline)
    while True:
        task = commands.get()
        if task is None:
            return
        readied: list[float] = []  # the process's CPU seconds when it reported ready
        try:
            acked, start, end, lat = _RUNNERS[task["system"]](task, _ready_callback(results, index, readied), gate)
            cpu = time.process_time() - readied[0] if readied else 0.0  # all threads (ZeroMQ's I/O too)
            results.put(("done", index, (acked, start, end, lat.tobytes(), cpu)))
        except BaseException as exc:  # noqa: BLE001 -- reported, not raised: the pool must keep serving
            results.put(("failed" if readied else "setup-failed", index, f"{type(exc).__name__}: {exc}"))


class _Gate:
    """What a producer waits on: the parent's go, and the deadline every producer of the slice shares."""

    def __init__(self, go: Any, deadline: Any):
        self._go, self._deadline = go, deadline

    def wait(self) -> float:
        """Block until the slice starts; its end, as ``time.monotonic()`` (the parent wrote it before go)."""
        self._go.wait()
        return float(self._deadline.value)


def _ready_callback(results: Any, index: int, readied: list[float]) -> Callable[[], None]:
    def ready() -> None:
        readied.append(time.process_time())
        results.put(("ready", index, None))

    return ready


class ProducerPool:
    """``size`` spawned producer processes, started once, synchronised per slice with one Event."""

    def __init__(self, size: int):
        self._ctx = mp.get_context("spawn")
        self._go = self._ctx.Event()
        self._deadline: Any = self._ctx.RawValue("d", 0.0)  # the slice's end, time.monotonic(); set before go
        self._results: Any = self._ctx.Queue()
        self._commands: list[Any] = []
        self._procs: list[Any] = []
        self.grow(size)

    def grow(self, size: int) -> None:
        while len(self._procs) < size:
            i = len(self._procs)
            q = self._ctx.Queue()
            p = self._ctx.Process(
                target=_worker_main,
                args=(i, q, self._results, self._go, self._deadline),
                name=f"nori-load-producer-{i}",
                daemon=True,
            )
            p.start()
            self._commands.append(q)
            self._procs.append(p)

    def _get(self, deadline: float) -> tuple[str, int, Any]:
        while True:
            try:
                msg: tuple[str, int, Any] = self._results.get(timeout=0.5)
                return msg
            except queue.Empty:
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"producer process died: {', '.join(dead)}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("producers did not answer in time") from None

    def run(self, tasks: list[Task], seconds: float) -> tuple[list[Numbers], list[str]]:
        """Run one slice of a cell: ``tasks[i]`` on producer i, all starting together; (numbers, errors)."""
        self.grow(len(tasks))
        self._go.clear()
        for i, task in enumerate(tasks):
            self._commands[i].put({**task, "index": i})
        readied, errors = 0, []
        deadline = time.monotonic() + SETUP_TIMEOUT
        for _ in tasks:
            kind, i, payload = self._get(deadline)
            if kind == "ready":
                readied += 1
            else:
                errors.append(f"producer {i}: {payload}")
        # One window for all: CLOCK_MONOTONIC is the same clock in every process of the machine,
        # so a producer that wakes late stops with the others instead of running on alone.
        self._deadline.value = time.monotonic() + seconds
        self._go.set()
        numbers = []
        deadline = time.monotonic() + seconds + SETUP_TIMEOUT
        for _ in range(readied):
            kind, i, payload = self._get(deadline)
            if kind == "done":
                numbers.append(payload)
            else:
                errors.append(f"producer {i}: {payload}")
        self._go.clear()
        return numbers, errors

    def close(self) -> None:
        """Stop every producer: release any waiting on go, ask each to exit, kill what lingers."""
        self._go.set()
        for q in self._commands:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 10
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for q in [*self._commands, self._results]:
            q.close()
            q.join_thread()


def slice_rate(numbers: Sequence[Numbers]) -> float:
    """Acked records per second of one slice: all its producers' records over the window they shared.

    The window runs from the earliest producer's start to the latest one's end.
    Summing each producer's own rate (acked / its own elapsed) instead counts a
    late starter's seconds of running nearly alone as if they overlapped the
    others': with staggered wake-ups that overstated the total (audit 8, r10:
    1.06x at N=32, 1.12x at N=64). 0 when nothing ran.
    """
    if not numbers:
        return 0.0
    window = max(n[2] for n in numbers) - min(n[1] for n in numbers)
    acked = sum(n[0] for n in numbers)
    return acked / window if window > 0 else 0.0


def summarize(cell: Cell, slices: list[list[Numbers]], errors: list[str], server_cpu: float = 0.0) -> CellResult:
    """A cell's row from its producers' numbers, slice by slice, and the CPU seconds its server used meanwhile.

    A slice's rate is ``slice_rate`` (its records over the window its producers
    shared); the cell's is the mean of its slices' (equal lengths).
    """
    if errors:
        return CellResult(cell, error=errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    rates = [slice_rate(numbers) for numbers in slices]
    rate = sum(rates) / len(rates) if rates else 0.0
    every = [n for numbers in slices for n in numbers]
    acked_total = sum(n[0] for n in every)
    cpu_us = (sum(n[4] for n in every) + server_cpu) / acked_total * 1e6 if acked_total else 0.0
    lat: list[float] = []
    for _, _, _, raw, _ in every:
        a: array[float] = array("d")
        a.frombytes(raw)
        lat.extend(a)
    lat.sort()
    return CellResult(cell, rate, percentile_ms(lat, 0.50), percentile_ms(lat, 0.99), len(lat), cpu_us=cpu_us)


# -- the peers' servers ------------------------------------------------------------------------


def _yard_writer(endpoint: str, path: str, fsync: str, ready: Any, stop: Any, counts: Any) -> None:
    """The ideal group-commit writer: block for one message, drain, one write, one fdatasync, ack all.

    ``counts`` (shared: groups, messages) is what the original prints as group(msgs).
    """
    import zmq

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    ready.set()
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            group = [sock.recv_multipart()]
            while True:
                try:
                    group.append(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            os.write(fd, b"".join(m[1] for m in group))
            if fsync == "always":
                os.fdatasync(fd)
            for ident, _ in group:
                sock.send_multipart([ident, b"k"])
            counts[0] += 1
            counts[1] += len(group)
    finally:
        os.close(fd)
        sock.close()
        ctx.term()


class Yardstick:
    """One yardstick writer process (fsync ``always`` or ``none``) with its ipc endpoint."""

    def __init__(self, fsync: str, data_dir: str, sock_dir: str):
        ctx = mp.get_context("spawn")
        self.path = os.path.join(data_dir, f"yardstick-{fsync}.log")
        self.endpoint = f"ipc://{sock_dir}/yard-{fsync}.sock"
        self._stop = ctx.Event()
        self._counts = ctx.RawArray("q", 2)  # groups written, messages in them
        ready = ctx.Event()
        self._proc = ctx.Process(
            target=_yard_writer,
            args=(self.endpoint, self.path, fsync, ready, self._stop, self._counts),
            name=f"nori-load-yardstick-{fsync}",
            daemon=True,
        )
        self._proc.start()
        if not ready.wait(SETUP_TIMEOUT) or not self._proc.is_alive():
            self.close()
            raise RuntimeError("the yardstick writer did not start")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def counts(self) -> tuple[int, int]:
        """(groups, messages) written so far."""
        return self._counts[0], self._counts[1]

    def reset(self) -> None:
        """Empty the file between cells (its writer appends with O_APPEND, so it follows)."""
        try:
            os.truncate(self.path, 0)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisPeer:
    """A private ``redis-server`` with AOF on the measured disk; ``appendfsync`` set per cell."""

    def __init__(self, workdir: str):
        import redis

        os.makedirs(workdir, exist_ok=True)
        self.port = _free_port()
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                workdir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--auto-aof-rewrite-percentage",
                "0",
                "--daemonize",
                "no",
                "--logfile",
                os.path.join(workdir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self._client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"redis-server did not start (see {workdir}/redis.log)") from None
                time.sleep(0.05)
        self.version = str(self._client.info("server").get("redis_version", "?"))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def prepare(self, appendfsync: str) -> None:
        self._client.delete("log")
        self._client.config_set("appendfsync", appendfsync)

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)


def redis_status() -> str:
    """'' when the Redis peer can run, else why not (one line)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server): Redis AOF peer skipped"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install redis): Redis AOF peer skipped"
    return ""


# -- the run -------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_load(args: argparse.Namespace) -> LoadReport:
    """Run the benchmark described by parsed ``args``; returns the report (does not print tables)."""
    producers, policies, modes, peers = args.producers_list, args.policies_list, args.modes_list, args.peers_list
    rep = LoadReport()
    why_no_redis = redis_status() if "redis" in peers else ""
    if why_no_redis:
        rep.notes.append(why_no_redis)
    redis_ok = "redis" in peers and not why_no_redis
    cells = plan_cells(producers, policies, modes, peers, args.full, redis_ok)
    base = args.dir
    if base is not None:
        os.makedirs(base, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="nori-load-", dir=base)
    sock_dir = tempfile.mkdtemp(prefix="nori-load-sock-")  # short ipc paths, whatever --dir is
    rep.settings = {
        "seconds_per_cell": args.seconds,
        "slices": args.slices,
        "producers": producers,
        "policies": policies,
        "modes": modes,
        "peers": peers,
        "depth": args.depth,
        "batch_size": args.batch_size,
        "record_bytes": RECORD_BYTES,
        "dir": run_dir,
        "disk": describe_disk(run_dir),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
    }
    writers: dict[str, Any] = {}
    controls: dict[str, Any] = {}
    yards: dict[str, Yardstick] = {}
    redis_peer: RedisPeer | None = None
    pool: ProducerPool | None = None
    try:
        _say(f"nori-wal load: {len(cells)} cells x {args.seconds:g} s in {run_dir} ({rep.settings['disk']})")
        rep.f_start = measure_f(run_dir, args.f_seconds)
        _say(f"F = {rep.f_start:,.0f} appends+fdatasync/s")
        pool = ProducerPool(max(producers))
        if any(c.system == "nori" for c in cells):
            from .client import WalClient
            from .config import FsyncPolicy, WalConfig
            from .writer_proc import WriterProcess

            for policy in policies:
                cfg = WalConfig(dir=os.path.join(run_dir, f"wal-{policy}"), fsync_policy=FsyncPolicy.parse(policy))
                writers[policy] = WriterProcess.spawn(cfg)
                controls[policy] = WalClient(writers[policy].endpoint, timeout=CLIENT_TIMEOUT)
        for c in cells:
            if c.system == "yardstick" and YARD_FSYNC[c.policy] not in yards:
                fs = YARD_FSYNC[c.policy]
                yards[fs] = Yardstick(fs, run_dir, sock_dir)
        if redis_ok and any(c.system == "redis" for c in cells):
            try:
                redis_peer = RedisPeer(os.path.join(run_dir, "redis"))
                rep.settings["redis"] = redis_peer.version
            except RuntimeError as exc:
                rep.notes.append(f"{exc}: Redis AOF peer skipped")
                cells = [c for c in cells if c.system != "redis"]
        runs = {cell: _CellRun() for cell in cells}
        finished: dict[Cell, CellResult] = {}
        slice_s = args.seconds / args.slices
        for cell, k in slice_order(cells, args.slices):
            run = runs[cell]
            if cell in finished:  # an earlier slice failed: the cell is reported already
                continue
            base_task: Task = {
                "system": cell.system,
                "mode": cell.mode,
                "depth": args.depth,
                "batch_size": args.batch_size,
            }
            if cell.system == "nori":
                base_task["endpoint"] = writers[cell.policy].endpoint
            elif cell.system == "yardstick":
                base_task["endpoint"] = yards[YARD_FSYNC[cell.policy]].endpoint
            elif cell.system == "redis":
                assert redis_peer is not None
                redis_peer.prepare(REDIS_FSYNC[cell.policy])
                base_task["port"] = redis_peer.port
            elif cell.system == "sqlite":
                if not run.sqlite_path:
                    run.sqlite_path = os.path.join(run_dir, f"sqlite-{cell.producers}.db")
                    _sqlite_create(run.sqlite_path)
                base_task["path"] = run.sqlite_path
            before = _commit_counts(cell, controls, yards)
            server = _server_pid(cell, writers, yards, redis_peer)
            cpu0 = process_cpu_seconds(server)
            numbers, errors = pool.run([base_task] * cell.producers, slice_s)
            cpu1 = process_cpu_seconds(server)
            run.add(
                numbers,
                errors,
                cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else 0.0,
                before,
                _commit_counts(cell, controls, yards),
            )
            # keep the disk bounded between slices
            if cell.system == "nori":
                ctl = controls[cell.policy]
                try:
                    ctl.delete_segments_before(ctl.current_position())
                except Exception as exc:  # noqa: BLE001 -- a failed GC must not lose the run's numbers
                    note = f"segment GC between {cell.policy} cells failed: {type(exc).__name__}: {exc}"
                    if note not in rep.notes:
                        rep.notes.append(note)
            if k < args.slices - 1 and not errors:
                continue
            if cell.system == "yardstick":  # its file grows across a cell's slices, as in the original
                yards[YARD_FSYNC[cell.policy]].reset()
            if run.sqlite_path:
                for suffix in ("", "-wal", "-shm"):
                    if os.path.exists(run.sqlite_path + suffix):
                        os.unlink(run.sqlite_path + suffix)
            result = summarize(cell, run.slices, run.errors, run.server_cpu)
            result.group = (
                group_size(cell, tuple(0 for _ in run.counts), tuple(run.counts), args.batch_size)
                if run.counts
                else 0.0
            )
            finished[cell] = result
            what = cell.policy if cell.system == "nori" else peer_label(cell)
            shown = result.error or f"{result.records_per_s:,.0f} rec/s, p99 {result.p99_ms:.2f} ms"
            _say(f"[{len(finished)}/{len(cells)}] N={cell.producers} {cell.system} {what} {cell.mode}: {shown}")
        rep.results = [finished[c] for c in cells if c in finished]
        rep.f_end = measure_f(run_dir, args.f_seconds)
    finally:
        closers: list[Callable[[], Any]] = [pool.close] if pool is not None else []
        closers += [c.close for c in controls.values()] + [w.stop for w in writers.values()]
        closers += [y.close for y in yards.values()] + ([redis_peer.close] if redis_peer is not None else [])
        for close in closers:  # every one of them, even when one fails
            try:
                close()
            except Exception as exc:  # noqa: BLE001 -- tear down the rest regardless
                rep.notes.append(f"teardown: {type(exc).__name__}: {exc}")
        shutil.rmtree(sock_dir, ignore_errors=True)
        if args.keep:
            rep.notes.append(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return rep


@dataclass
class _CellRun:
    """What a cell's slices gathered so far."""

    slices: list[list[Numbers]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu: float = 0.0
    counts: list[int] = field(default_factory=list)  # the writer's counters' growth; [] once one is unknown
    counts_known: bool = True
    sqlite_path: str = ""

    def add(
        self,
        numbers: list[Numbers],
        errors: list[str],
        server_cpu: float,
        before: tuple[int, ...],
        after: tuple[int, ...],
    ) -> None:
        self.slices.append(numbers)
        self.errors += errors
        self.server_cpu += server_cpu
        if not (before and after and self.counts_known):
            self.counts, self.counts_known = [], False
            return
        grown = [a - b for a, b in zip(after, before)]
        self.counts = [c + g for c, g in zip(self.counts, grown)] if self.counts else grown


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` (all its threads) has used, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _server_pid(
    cell: Cell, writers: dict[str, Any], yards: dict[str, "Yardstick"], redis_peer: "RedisPeer | None"
) -> int | None:
    """The process serving a cell (its CPU counts with the producers'); None for SQLite (in-process)."""
    if cell.system == "nori":
        return int(writers[cell.policy].pid)
    if cell.system == "yardstick":
        return yards[YARD_FSYNC[cell.policy]].pid
    if cell.system == "redis" and redis_peer is not None:
        return redis_peer.pid
    return None


def _commit_counts(cell: Cell, controls: dict[str, Any], yards: dict[str, "Yardstick"]) -> tuple[int, ...]:
    """What a cell's writer has done so far: nori (records, writes, fsyncs), yardstick (groups, messages)."""
    try:
        if cell.system == "nori":
            info = controls[cell.policy].info()
            return info.get("records", 0), info.get("writes", 0), info.get("fsyncs", 0)
        if cell.system == "yardstick":
            return yards[YARD_FSYNC[cell.policy]].counts()
    except Exception:  # noqa: BLE001 -- a counter is a detail: never lose the cell's numbers for it
        pass
    return ()


def group_size(cell: Cell, before: tuple[int, ...], after: tuple[int, ...], batch_size: int) -> float:
    """Records per group commit during a cell (per fsync; per write under Os); 0.0 when not known."""
    if not before or not after:
        return 0.0
    if cell.system == "nori":
        records = after[0] - before[0]
        per = 1 if cell.policy == "os" else 2  # Os acks after the write; the others after an fsync
        groups = after[per] - before[per]
    else:
        groups = after[0] - before[0]
        records = (after[1] - before[1]) * (batch_size if cell.mode == "batch" else 1)
    return records / groups if groups > 0 else 0.0


def _sqlite_create(path: str) -> None:
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL mode ({mode}) in {path}")
        db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, data BLOB)")
    finally:
        db.close()


# -- output --------------------------------------------------------------------------------------


def render(rep: LoadReport, depth: int, batch_size: int) -> str:
    """The tables and ratios, as printed."""
    s = rep.settings
    f = rep.f_start
    lines = [
        f"nori-wal contention load: {RECORD_BYTES} B records, {s.get('seconds_per_cell', 0):g} s per cell"
        + (f" in {s['slices']} interleaved slices" if s.get("slices", 1) > 1 else "")
        + ", "
        f"{s.get('cpus')} CPUs, {s.get('disk')}, Python {s.get('python')}, SQLite {s.get('sqlite')}"
        + (f", Redis {s['redis']}" if "redis" in s else ""),
        (
            f"F = {rep.f_start:,.0f} appends+fdatasync/s at start ({1e3 / rep.f_start if rep.f_start else 0:.3f} ms), "
            f"{rep.f_end:,.0f}/s at end; x F uses the start figure"
        ),
        "",
        HEADER,
    ]

    def sqlite_at(n: int) -> CellResult | None:
        return rep.find("sqlite", "-", "sync", n)

    order = {m: i for i, m in enumerate(MODES)}
    pol = {p: i for i, p in enumerate(POLICIES)}
    nori = sorted(
        (r for r in rep.results if r.cell.system == "nori"),
        key=lambda r: (pol[r.cell.policy], order[r.cell.mode], r.cell.producers),
    )
    prev: tuple[str, ...] | None = None
    for r in nori:
        if prev is not None and (r.cell.policy, r.cell.mode) != prev:
            lines.append("")
        prev = (r.cell.policy, r.cell.mode)
        lines.append(format_row(r, f, sqlite_at(r.cell.producers), depth, batch_size))
    peers = [r for r in rep.results if r.cell.system != "nori"]
    if peers:
        sysorder = {"sqlite": 0, "yardstick": 1, "redis": 2}
        peers.sort(
            key=lambda r: (sysorder[r.cell.system], pol.get(r.cell.policy, -1), order[r.cell.mode], r.cell.producers)
        )
        lines += ["", "Peers, same run:", HEADER.replace("policy      ", "peer        ")]
        prev = None
        for r in peers:
            key = (r.cell.system, r.cell.policy, r.cell.mode)
            if prev is not None and key != prev:
                lines.append("")
            prev = key
            lines.append(format_row(r, f, sqlite_at(r.cell.producers), depth, batch_size))
    lines += ["", "Ratios (same run):"] + ["  " + x for x in ratio_lines(rep, depth, batch_size)]
    if rep.notes:
        lines += [""] + [f"note: {x}" for x in rep.notes]
    return "\n".join(lines)


def write_png(rep: LoadReport, path: str, depth: int, batch_size: int) -> str:
    """Throughput against producers, one panel per policy; '' if matplotlib is absent.

    In each panel nori-wal's modes are solid lines (colour = mode), the yardstick
    dashed and Redis dotted in the colour of the mode they stand beside, SQLite FULL
    black dash-dot, F a grey line.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return ""
    ok = [r for r in rep.results if not r.error]
    policies = [p for p in POLICIES if any(r.cell.system == "nori" and r.cell.policy == p for r in ok)]
    if not policies:
        return ""
    colour = {"sync": "tab:blue", "pipelined": "tab:orange", "submit": "tab:red", "batch": "tab:green"}
    style = {"nori": "-", "yardstick": "--", "redis": ":", "sqlite": "-."}
    counts = sorted({r.cell.producers for r in ok})
    fig, axes = plt.subplots(1, len(policies), figsize=(6.5 * len(policies), 6), sharey=True, squeeze=False)
    for ax, policy in zip(axes[0], policies):
        series: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in ok:
            c = r.cell
            if c.policy == policy or c.system == "sqlite":
                series.setdefault((c.system, c.mode), []).append((c.producers, r.records_per_s))
        for (system, mode), pts in sorted(series.items(), key=lambda kv: (list(style).index(kv[0][0]), kv[0][1])):
            pts.sort()
            if system == "sqlite":
                label, col = "SQLite FULL, 1 row/txn", "black"
            else:
                who = {"nori": "nori-wal", "yardstick": "yardstick", "redis": "Redis"}[system]
                label, col = f"{who} {mode_label(mode, depth, batch_size)}", colour[mode]
            ax.plot(
                [p for p, _ in pts],
                [v for _, v in pts],
                style[system],
                color=col,
                marker="o",
                markersize=3,
                label=label,
            )
        if rep.f_start:
            ax.axhline(rep.f_start, color="grey", linewidth=0.8, label=f"F = {rep.f_start:,.0f}/s")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(counts)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("producer processes")
        present = {system for system, _ in series}
        peers = ["SQLite FULL"] if "sqlite" in present else []
        if "yardstick" in present:
            peers.append(f"yardstick fsync {YARD_FSYNC[policy]}")
        if "redis" in present:
            peers.append(f"Redis appendfsync {REDIS_FSYNC[policy]}")
        ax.set_title(f"nori-wal fsync {policy}" + (f"; beside: {', '.join(peers)}" if peers else ""), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("acked 1 KB records / s")
    fig.suptitle("nori-wal contention load: every line measured in the same run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def report_json(rep: LoadReport) -> dict[str, Any]:
    return {
        "f_start": rep.f_start,
        "f_end": rep.f_end,
        "settings": rep.settings,
        "notes": rep.notes,
        "results": [
            {
                **asdict(r.cell),
                "records_per_s": r.records_per_s,
                "mib_per_s": r.mib_per_s,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "calls": r.calls,
                "error": r.error,
                "records_per_group": r.group or None,
                "cpu_us_per_record": r.cpu_us or None,
                "x_f": r.records_per_s / rep.f_start if rep.f_start else None,
            }
            for r in rep.results
        ],
    }


# -- command line --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        default=None,
        help="where to put the logs (a fresh subdirectory is made and removed after; "
        "default: the system temp dir). Measure the disk you care about.",
    )
    p.add_argument(
        "--producers", default=None, help=f"producer counts (default {','.join(map(str, DEFAULT_PRODUCERS))})"
    )
    p.add_argument("--policies", default=None, help="fsync policies: always,batch,os (default all)")
    p.add_argument(
        "--modes", default=None, help="sync,pipelined,submit,batch (default sync,pipelined,batch; --full: all four)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"seconds per cell (default {DEFAULT_SECONDS:g}; --quick {QUICK_SECONDS:g}; --full {FULL_SECONDS:g})",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=DEFAULT_SLICES,
        help=f"interleaved slices per cell: the cells at one producer count take turns, in order "
        f"then in reverse (default {DEFAULT_SLICES}; 1: one after the other)",
    )
    p.add_argument("--depth", type=int, default=32, help="appends in flight per producer in pipelined mode")
    p.add_argument("--batch-size", type=int, default=100, help="records per append_batch in batch mode")
    p.add_argument("--peers", default=",".join(PEERS), help="peers to run beside: sqlite,yardstick,redis")
    p.add_argument("--no-peers", action="store_true", help="run no peers (F is still measured)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a ~30 s run: producers 1,8, policies always,os")
    g.add_argument(
        "--full",
        action="store_true",
        help="the whole matrix: every policy and mode, every peer beside every policy, 3 s cells",
    )
    p.add_argument("--f-seconds", type=float, default=1.0, help="length of each raw fdatasync probe (s)")
    p.add_argument(
        "--plot",
        default="nori-wal-load.png",
        help="PNG of throughput against producers (needs matplotlib; default ./nori-wal-load.png)",
    )
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--keep", action="store_true", help="keep the run directory (for inspection)")


def resolve(args: argparse.Namespace) -> None:
    """Fill the derived settings (lists, defaults per --quick/--full) into ``args``; ValueError if bad."""
    prod: tuple[int, ...]
    pols: tuple[str, ...]
    if args.quick:
        prod, pols, secs = QUICK_PRODUCERS, ("always", "os"), QUICK_SECONDS
    elif args.full:
        prod, pols, secs = DEFAULT_PRODUCERS, POLICIES, FULL_SECONDS
    else:
        prod, pols, secs = DEFAULT_PRODUCERS, POLICIES, DEFAULT_SECONDS
    args.producers_list = parse_counts(args.producers) if args.producers else list(prod)
    args.policies_list = parse_list(args.policies, POLICIES, "policy") if args.policies else list(pols)
    default_modes = MODES if args.full else DEFAULT_MODES
    args.modes_list = parse_list(args.modes, MODES, "mode") if args.modes else list(default_modes)
    args.peers_list = [] if args.no_peers else (parse_list(args.peers, PEERS, "peer") if args.peers.strip() else [])
    args.seconds = secs if args.seconds is None else args.seconds
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    if args.depth < 1 or args.batch_size < 1 or args.slices < 1:
        raise ValueError("--depth, --batch-size and --slices must be >= 1")
    if not args.f_seconds > 0:
        raise ValueError(f"--f-seconds must be > 0, got {args.f_seconds}")


def run(args: argparse.Namespace) -> int:
    """``nori-wal load``: run, print the tables and ratios; 0 on success, 2 bad usage, 1 a cell failed."""
    try:
        resolve(args)
    except ValueError as exc:
        print(f"nori-wal load: {exc}", file=sys.stderr)
        return 2
    try:
        rep = run_load(args)
    except KeyboardInterrupt:
        print("nori-wal load: interrupted", file=sys.stderr)
        return 130
    if not args.no_plot:
        png = write_png(rep, args.plot, args.depth, args.batch_size)
        rep.notes.append(f"wrote {png}" if png else "matplotlib is not installed: no PNG (pip install matplotlib)")
    print(render(rep, args.depth, args.batch_size), flush=True)  # first: a failed --json write loses nothing
    if args.json:
        try:
            with open(args.json, "w") as fh:
                json.dump(report_json(rep), fh, indent=1)
        except OSError as exc:
            print(f"nori-wal load: error: writing {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 4
    return 1 if any(r.error for r in rep.results) else 0


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="load", description=(__doc__ or "").splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(None if argv is None else list(argv)))
