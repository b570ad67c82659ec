"""Keyed vs unkeyed appends (embedded, and through a writer process), and the dedupe index's memory per key.

    python scripts/dedupe_bench.py                 # full: 9 rounds per case, 1,000,000 keys
    python scripts/dedupe_bench.py --quick         # tiny sizes (a smoke run; figures mean nothing)

Embedded: one Wal (Always) takes ``--appends`` records of ``--size`` bytes
per round, one at a time (sync), and ``--batch-factor`` times as many in
batches of 100, with and without an idempotency key (36 bytes, a uuid4
string); it prints records/s, the keyed cost and the CPU per record.

Through a writer process (Always), with N = 1, 8, 32 producer processes
(``--producers``) that stay up: unkeyed, keyed and "retrying"
(``delivery_timeout`` set, no key of its own: the client's automatic 16-byte
keys), records/s and the cost against unkeyed.

The modes take turns round after round (``--rounds``) on the same log or
writer, so each pair of figures saw the same disk: fsync times swing, so a
cost is the median of the rounds' paired costs, printed with its range.
Then it fills a log's DedupeIndex with ``--keys`` keys (36-byte ones, and a
retrying client's 16-byte automatic ones; added 100 at a time and one at a
time) and reports the bytes per key tracemalloc sees.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from typing import Any

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig
from nori_wal.codec import SEAL_FRAME_SIZE
from nori_wal.dedupe import index_for


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def make_records(n: int, size: int, mode: str) -> list[Record]:
    """``n`` records of ``size`` bytes; with a uuid4 idempotency key each in mode "keyed"."""
    value = b"x" * size
    recs = [Record.put(b"k%d" % i, value) for i in range(n)]
    if mode == "keyed":
        recs = [r.with_idempotency_key(str(uuid.uuid4()).encode()) for r in recs]
    return recs


def append_all(target: Any, recs: list[Record], batch: int) -> None:
    if batch == 1:
        for r in recs:
            target.append(r)
    else:
        for i in range(0, len(recs), batch):
            target.append_batch(recs[i : i + batch])


def embedded_rounds(n: int, size: int, batch: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """Per mode ("unkeyed", "keyed"), each round's (records/s, CPU us per record): one embedded Wal (Always),
    the modes taking turns round after round, so that each pair of figures saw the same disk."""
    d = tempfile.mkdtemp(prefix="dedupe-bench-")
    out: dict[str, list[tuple[float, float]]] = {"unkeyed": [], "keyed": []}
    try:
        wal, _ = Wal.open(WalConfig(d, fsync_policy=FsyncPolicy.always()))
        for _ in range(rounds):
            for mode in out:
                recs = make_records(n, size, mode)
                t0, c0 = time.perf_counter(), time.process_time()
                append_all(wal, recs, batch)
                dt, cpu = time.perf_counter() - t0, time.process_time() - c0
                out[mode].append((n / dt, cpu / n * 1e6))
        wal.close()
        return out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _producer(directory: str, n: int, size: int, batch: int, orders: Any, done: Any) -> None:
    """Append ``n`` records in the mode each order names (None: stop); report the time each round ended."""
    from nori_wal import WalClient

    clients = {
        "unkeyed": WalClient.for_dir(directory, timeout=60.0),
        "retrying": WalClient.for_dir(directory, timeout=60.0, delivery_timeout=60.0),
    }
    clients["keyed"] = clients["unkeyed"]
    for c in clients.values():
        c.append(Record.put(b"warm", b"up"))  # connected before any clock starts
    done.put(time.perf_counter())
    while (mode := orders.get()) is not None:
        recs = make_records(n, size, "keyed" if mode == "keyed" else "unkeyed")
        orders.task_done()
        append_all(clients[mode], recs, batch)
        done.put(time.perf_counter())
    for c in clients.values():
        c.close()


def writer_rounds(
    producers: int, n: int, size: int, batch: int, rounds: int, modes: list[str]
) -> dict[str, list[float]]:
    """Per mode, each round's records/s through one writer process (Always) and ``producers`` producer
    processes that stay up; the modes take turns round after round (paired figures, as above)."""
    import multiprocessing as mp

    from nori_wal.writer_proc import WriterProcess

    ctx = mp.get_context("spawn")
    d = tempfile.mkdtemp(prefix="dedupe-bench-")
    writer = WriterProcess.spawn(WalConfig(d, fsync_policy=FsyncPolicy.always()))
    out: dict[str, list[float]] = {m: [] for m in modes}
    procs = []
    try:
        share = max(batch, n // producers)
        done = ctx.Queue()
        orders = [ctx.JoinableQueue() for _ in range(producers)]
        procs = [ctx.Process(target=_producer, args=(d, share, size, batch, q, done)) for q in orders]
        for p in procs:
            p.start()
        for _ in procs:  # every producer started, imported and connected
            done.get(timeout=120)
        for _ in range(rounds):
            for mode in modes:
                for q in orders:
                    q.put(mode)
                for q in orders:
                    q.join()  # records made: the clock starts now
                t0 = time.perf_counter()
                ends = [done.get(timeout=600) for _ in procs]
                out[mode].append(share * producers / (max(ends) - t0))
        for q in orders:
            q.put(None)
        for p in procs:
            p.join(60)
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        writer.stop()
        shutil.rmtree(d, ignore_errors=True)


def cost(rates: dict[str, list[float]], mode: str) -> tuple[float, float, float]:
    """The cost of ``mode`` against unkeyed, in percent: the median over rounds, and the smallest and largest."""
    costs = sorted(100 * (1 - r / u) for r, u in zip(rates[mode], rates["unkeyed"]))
    return costs[len(costs) // 2], costs[0], costs[-1]


def index_memory(keys: int, batch: int = 100, auto: bool = False) -> float:
    """Bytes per key of a log's DedupeIndex holding ``keys`` keys added ``batch`` at a time, 1 ms apart
    (tracemalloc): 36-byte keys (a uuid4 string), or a retrying client's 16-byte automatic keys."""
    if auto:
        raw = [bytearray(b"\x00" + os.urandom(15)) for _ in range(keys)]
    else:
        raw = [bytearray(str(uuid.uuid4()).encode()) for _ in range(keys)]  # bytes() copies: the index owns them
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index = index_for(WalConfig(dedupe_max_keys=keys, dedupe_max_auto_keys=keys))
    t = 1_700_000_000_000
    for start in range(0, keys, batch):
        chunk = [bytes(k) for k in raw[start : start + batch]]
        t += 1
        if batch == 1:
            index.add(chunk[0], Position(start // 100_000, 32 + start % 100_000 * 150), t)
            continue
        runs = index.reserve(chunk, [150 * i for i in range(len(chunk))], len(chunk) if auto else 0, t)
        assert runs is not None
        index.place(runs, start // 100_000, 32 + start % 100_000 * 150)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(index) == keys
    return used / keys


def reopen_seconds(total_bytes: int, keyed_every: int = 100) -> tuple[float, float, int]:
    """Seconds to reopen a log of ``total_bytes`` (1 KB records, one in ``keyed_every`` keyed) after a clean
    close, and after a crash (the last segment unsealed: its keys are rebuilt by a scan); keys rebuilt."""
    d = tempfile.mkdtemp(prefix="dedupe-reopen-")
    try:
        wal, _ = Wal.open(WalConfig(d, fsync_policy=FsyncPolicy.os()))
        value = b"v" * 1000
        n = total_bytes // 1024
        for start in range(0, n, 1000):
            batch = [Record.put(b"k%d" % i, value) for i in range(start, min(n, start + 1000))]
            batch = [
                r.with_idempotency_key(b"key-%d" % (start + j)) if j % keyed_every == 0 else r
                for j, r in enumerate(batch)
            ]
            wal.append_batch(batch)
        wal.close()
        started = time.perf_counter()
        wal, _ = Wal.open(WalConfig(d, fsync_policy=FsyncPolicy.os()))
        clean = time.perf_counter() - started
        keys = len(wal._dedupe)
        wal.close()
        # A crash: the same log with its last segment's seal cut off (what a SIGKILL before the close leaves).
        last = max(f for f in os.listdir(d) if f.endswith(".wal"))
        path = os.path.join(d, last)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - SEAL_FRAME_SIZE)
        for name in os.listdir(d):
            if name.startswith(last[:-4]) and name.endswith(".keys"):
                os.unlink(os.path.join(d, name))
        started = time.perf_counter()
        wal, _ = Wal.open(WalConfig(d, fsync_policy=FsyncPolicy.os()))
        crashed = time.perf_counter() - started
        wal.close()
        return clean, crashed, keys
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--appends", type=int, default=2_000, help="records per sync round (split among N producers)")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reopen-mib", type=int, default=1024, help="size of the log reopened (MiB; 0: skip)")
    ap.add_argument("--batch-factor", type=int, default=10, help="batch(100) rounds append this many times --appends")
    ap.add_argument("--rounds", type=int, default=9, help="rounds per case, the modes taking turns; medians shown")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.appends, args.keys, args.producers, args.reopen_mib, args.rounds = 200, 2_000, [1, 2], 4, 1
    rounds = args.rounds

    def records(batch: int) -> int:
        return args.appends if batch == 1 else args.appends * args.batch_factor

    sizes = f"{args.size}-byte values, {args.appends} appends per sync round, {records(100)} per batch round"
    print(f"embedded Wal, Always, {sizes}; {rounds} rounds, the modes taking turns on one log (medians)")
    print(f"{'mode':>12} {'unkeyed rec/s':>14} {'keyed rec/s':>12} {'keyed cost (range)':>22} {'CPU us/record':>16}")
    for batch in (1, 100):
        runs = embedded_rounds(records(batch), args.size, batch, rounds)
        rates = {m: [r for r, _c in runs[m]] for m in runs}
        (plain, cpu_plain), (keyed_rate, cpu_keyed) = (
            (median(rates[m]), median([c for _r, c in runs[m]])) for m in ("unkeyed", "keyed")
        )
        mid, lo, hi = cost(rates, "keyed")
        mode = "sync" if batch == 1 else f"batch({batch})"
        print(
            f"{mode:>12} {plain:14,.0f} {keyed_rate:12,.0f} {mid:8.1f}% ({lo:5.1f}..{hi:5.1f}) "
            f"{cpu_plain:7.2f} -> {cpu_keyed:.2f}"
        )
    print(f"\nwriter process, Always, {sizes} (split among N producers); {rounds} rounds, the modes taking turns")
    print(
        f"{'N':>3} {'mode':>10} {'unkeyed rec/s':>14} {'keyed rec/s':>12} {'cost (range)':>21} "
        f"{'retrying rec/s':>15} {'cost (range)':>21}"
    )
    modes = ["unkeyed", "keyed", "retrying"]
    for producers in args.producers:
        for batch in (1, 100):
            by_mode = writer_rounds(producers, records(batch), args.size, batch, rounds, modes)
            plain, by_key, retrying = (median(by_mode[m]) for m in modes)
            (k, klo, khi), (r, rlo, rhi) = cost(by_mode, "keyed"), cost(by_mode, "retrying")
            mode = "sync" if batch == 1 else f"batch({batch})"
            print(
                f"{producers:>3} {mode:>10} {plain:14,.0f} {by_key:12,.0f} {k:6.1f}% ({klo:5.1f}..{khi:5.1f}) "
                f"{retrying:15,.0f} {r:6.1f}% ({rlo:5.1f}..{rhi:5.1f})"
            )
    if args.reopen_mib:
        clean, crashed, keys = reopen_seconds(args.reopen_mib * 2**20)
        print(
            f"reopen of a {args.reopen_mib} MiB log ({keys:,} keys in the window): {clean * 1000:.1f} ms after a "
            f"clean close, {crashed * 1000:.1f} ms after a crash (the last segment rescanned)"
        )
    for auto, what in ((False, "keys of 36 B"), (True, "automatic keys (16 B)")):
        batched, single = index_memory(args.keys, 100, auto), index_memory(args.keys, 1, auto)
        mib = args.keys / 2**20
        print(
            f"dedupe index: {args.keys:,} {what}: {batched:.0f} bytes per key added 100 at a time "
            f"({batched * mib:.0f} MiB), {single:.0f} one at a time ({single * mib:.0f} MiB)"
        )


if __name__ == "__main__":
    main()
