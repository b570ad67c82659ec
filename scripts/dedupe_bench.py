"""Keyed vs unkeyed appends (embedded, and through a writer process), and the dedupe index's memory per key.

    python scripts/dedupe_bench.py                 # full: 20,000 appends per case, 1,000,000 keys
    python scripts/dedupe_bench.py --quick         # tiny sizes (a smoke run; figures mean nothing)

Through a writer process (Always), with N = 1, 8, 32 producer processes
(``--producers``), each appending its share one at a time (sync) and in
batches of 100: unkeyed, keyed (a uuid4 key per record) and "retrying"
(``delivery_timeout`` set, no key of its own: the client's automatic 16-byte
keys), records/s and the cost against unkeyed.

Each case appends N records of ``--size`` bytes to a fresh embedded Wal under
Always, one at a time and in batches of 100, with and without an idempotency
key (36-byte keys, as a uuid4 string), and prints records/s, the keyed cost
in percent and the CPU time per record of the appending process. Every case
runs ``--repeat`` times, the modes alternating, and the median is shown:
fsync times swing, so read a cost beside the unkeyed figure of the same run.
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


def run_case(n: int, size: int, batch: int, keyed: bool) -> tuple[float, float]:
    """Records per second, and CPU microseconds per record (this process), for one case on a fresh directory."""
    d = tempfile.mkdtemp(prefix="dedupe-bench-")
    try:
        wal, _ = Wal.open(WalConfig(d, fsync_policy=FsyncPolicy.always()))
        value = b"x" * size
        recs = [Record.put(b"k%d" % i, value) for i in range(n)]
        if keyed:
            recs = [r.with_idempotency_key(str(uuid.uuid4()).encode()) for r in recs]
        t0, c0 = time.perf_counter(), time.process_time()
        if batch == 1:
            for r in recs:
                wal.append(r)
        else:
            for i in range(0, n, batch):
                wal.append_batch(recs[i : i + batch])
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        wal.close()
        return n / dt, cpu / n * 1e6
    finally:
        shutil.rmtree(d, ignore_errors=True)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _producer(directory: str, n: int, size: int, batch: int, mode: str, go: Any, done: Any) -> None:
    from nori_wal import WalClient

    client = WalClient.for_dir(directory, timeout=60.0, delivery_timeout=60.0 if mode == "retrying" else None)
    value = b"x" * size
    recs = [Record.put(b"k%d" % i, value) for i in range(n)]
    if mode == "keyed":
        recs = [r.with_idempotency_key(str(uuid.uuid4()).encode()) for r in recs]
    client.append(Record.put(b"warm", b"up"))  # connected before the clock starts
    go.wait()
    if batch == 1:
        for r in recs:
            client.append(r)
    else:
        for i in range(0, n, batch):
            client.append_batch(recs[i : i + batch])
    done.put(time.perf_counter())
    client.close()


def run_writer_case(producers: int, n: int, size: int, batch: int, mode: str) -> float:
    """Records per second through a writer process (Always) with ``producers`` producer processes."""
    import multiprocessing as mp

    from nori_wal.writer_proc import WriterProcess

    ctx = mp.get_context("spawn")
    d = tempfile.mkdtemp(prefix="dedupe-bench-")
    writer = WriterProcess.spawn(WalConfig(d, fsync_policy=FsyncPolicy.always()))
    try:
        go, done = ctx.Event(), ctx.Queue()
        share = max(batch, n // producers)
        procs = [ctx.Process(target=_producer, args=(d, share, size, batch, mode, go, done)) for _ in range(producers)]
        for p in procs:
            p.start()
        time.sleep(0.5 + 0.05 * producers)  # let them connect (a benchmark, not a test)
        t0 = time.perf_counter()
        go.set()
        ends = [done.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(60)
        return share * producers / (max(ends) - t0)
    finally:
        writer.stop()
        shutil.rmtree(d, ignore_errors=True)


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
    ap.add_argument("--appends", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--producers", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reopen-mib", type=int, default=1024, help="size of the log reopened (MiB; 0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case, alternating modes; the median is shown")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.appends, args.keys, args.producers, args.reopen_mib, args.repeat = 200, 2_000, [1, 2], 4, 1
    reps = args.repeat
    print(f"embedded Wal, Always, {args.appends} appends of {args.size} B per case (median of {reps}, alternating)")
    print(f"{'mode':>12} {'unkeyed rec/s':>14} {'keyed rec/s':>12} {'keyed cost':>11} {'CPU us/record':>22}")
    for batch in (1, 100):
        runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(reps):
            for keyed in (False, True):
                runs[keyed].append(run_case(args.appends, args.size, batch, keyed))
        plain, keyed_rate = (median([r for r, _c in runs[k]]) for k in (False, True))
        cpu_plain, cpu_keyed = (median([c for _r, c in runs[k]]) for k in (False, True))
        mode = "sync" if batch == 1 else f"batch({batch})"
        print(
            f"{mode:>12} {plain:14,.0f} {keyed_rate:12,.0f} {100 * (1 - keyed_rate / plain):10.1f}% "
            f"{cpu_plain:10.2f} -> {cpu_keyed:.2f}"
        )
    print(
        f"\nwriter process, Always, {args.appends} appends of {args.size} B per case (split among N producers; "
        f"median of {reps}, alternating)"
    )
    print(
        f"{'N':>3} {'mode':>10} {'unkeyed rec/s':>14} {'keyed rec/s':>12} {'cost':>6} "
        f"{'retrying rec/s':>15} {'cost':>6}"
    )
    modes = ("unkeyed", "keyed", "retrying")
    for producers in args.producers:
        for batch in (1, 100):
            rates: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(reps):
                for m in modes:
                    rates[m].append(run_writer_case(producers, args.appends, args.size, batch, m))
            plain, by_key, retrying = (median(rates[m]) for m in modes)
            mode = "sync" if batch == 1 else f"batch({batch})"
            print(
                f"{producers:>3} {mode:>10} {plain:14,.0f} {by_key:12,.0f} {100 * (1 - by_key / plain):5.1f}% "
                f"{retrying:15,.0f} {100 * (1 - retrying / plain):5.1f}%"
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
