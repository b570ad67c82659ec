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

With matplotlib installed (``pip install nori-wal[plot]``) a PNG of throughput
against producers is written too (``./nori-wal-load.png``; ``--plot PATH``,
``--no-plot``). On a terminal a progress line with an ETA runs on stderr.

Modules: ``plan`` (the values and the pure rules: cells, their order, their
numbers), ``cells`` (the work each producer does per system), ``pool`` (the
producer processes), ``systems`` (nori-wal and the peers behind one protocol),
``peers`` (the peers' servers), ``probes`` (F, the disk, CPU), ``run`` (the run
loop), ``report`` (the table, ``--json``), ``plot`` (the PNG), ``progress``,
``command`` (the flags).
"""

from __future__ import annotations

from .command import add_arguments, main, resolve, run
from .plan import RECORD_BYTES, Cell, CellResult, LoadReport
from .run import run_load

__all__ = ["RECORD_BYTES", "Cell", "CellResult", "LoadReport", "add_arguments", "main", "resolve", "run", "run_load"]
