"""The load run's values and the pure rules over them: the cells, their order, their numbers.

No I/O here: what a run measures (``Cell``), what it found (``CellResult``,
``LoadReport``), which cells a run has and in what order (``plan_cells``,
``slice_order``), and how a cell's row comes from its producers' numbers
(``slice_rate``, ``summarize``, ``group_size``).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class CellRun:
    """What a cell's slices gathered so far."""

    slices: list[list[Numbers]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    server_cpu: float = 0.0
    counts: list[int] = field(default_factory=list)  # the writer's counters' growth; [] once one is unknown
    counts_known: bool = True

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
