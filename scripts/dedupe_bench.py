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
key (36-byte keys, as a uuid4 string), and prints records/s and the keyed
cost in percent. Then it fills a bare DedupeIndex with ``--keys`` keys and
reports the bytes per key tracemalloc sees (keys, entries, order queue).
Run it beside the unkeyed figures of the same run: fsync times swing.
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
from nori_wal.dedupe import MERGE_SPAN_MS, DedupeIndex


def run_case(n: int, size: int, batch: int, keyed: bool) -> float:
    """Records per second for one case on a fresh directory."""
    d = tempfile.mkdtemp(prefix="dedupe-bench-")
    try:
        wal, _ = Wal.open(WalConfig(d, fsync_policy=FsyncPolicy.always()))
        value = b"x" * size
        recs = [Record.put(b"k%d" % i, value) for i in range(n)]
        if keyed:
            recs = [r.with_idempotency_key(str(uuid.uuid4()).encode()) for r in recs]
        t0 = time.perf_counter()
        if batch == 1:
            for r in recs:
                wal.append(r)
        else:
            for i in range(0, n, batch):
                wal.append_batch(recs[i : i + batch])
        dt = time.perf_counter() - t0
        wal.close()
        return n / dt
    finally:
        shutil.rmtree(d, ignore_errors=True)


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


def index_memory(keys: int, merge_span_ms: int = MERGE_SPAN_MS) -> float:
    """Bytes per key of a DedupeIndex holding ``keys`` 36-byte keys added 1 ms apart (tracemalloc).

    With a log's ``merge_span_ms`` keys share runs (dedupe Rule 4); with 0
    each key would be a run of its own (about 420 bytes a key).
    """
    raw = [bytearray(str(uuid.uuid4()).encode()) for _ in range(keys)]  # bytes() copies: the index owns its keys
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    index = DedupeIndex(600_000, keys, merge_span_ms=merge_span_ms)
    for i, k in enumerate(raw):
        index.add(bytes(k), Position(i // 100_000, 32 + i % 100_000 * 150), 1_700_000_000_000 + i)
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
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.appends, args.keys, args.producers, args.reopen_mib = 200, 2_000, [1, 2], 4
    print(f"embedded Wal, Always, {args.appends} appends of {args.size} B per case")
    print(f"{'mode':>12} {'unkeyed rec/s':>14} {'keyed rec/s':>12} {'keyed cost':>11}")
    for batch in (1, 100):
        plain = run_case(args.appends, args.size, batch, keyed=False)
        keyed = run_case(args.appends, args.size, batch, keyed=True)
        mode = "sync" if batch == 1 else f"batch({batch})"
        print(f"{mode:>12} {plain:14,.0f} {keyed:12,.0f} {100 * (1 - keyed / plain):10.1f}%")
    print(f"\nwriter process, Always, {args.appends} appends of {args.size} B per case (split among N producers)")
    print(
        f"{'N':>3} {'mode':>10} {'unkeyed rec/s':>14} {'keyed rec/s':>12} {'cost':>6} "
        f"{'retrying rec/s':>15} {'cost':>6}"
    )
    for producers in args.producers:
        for batch in (1, 100):
            plain = run_writer_case(producers, args.appends, args.size, batch, "unkeyed")
            keyed = run_writer_case(producers, args.appends, args.size, batch, "keyed")
            retrying = run_writer_case(producers, args.appends, args.size, batch, "retrying")
            mode = "sync" if batch == 1 else f"batch({batch})"
            print(
                f"{producers:>3} {mode:>10} {plain:14,.0f} {keyed:12,.0f} {100 * (1 - keyed / plain):5.1f}% "
                f"{retrying:15,.0f} {100 * (1 - retrying / plain):5.1f}%"
            )
    if args.reopen_mib:
        clean, crashed, keys = reopen_seconds(args.reopen_mib * 2**20)
        print(
            f"reopen of a {args.reopen_mib} MiB log ({keys:,} keys in the window): {clean * 1000:.1f} ms after a "
            f"clean close, {crashed * 1000:.1f} ms after a crash (the last segment rescanned)"
        )
    per_key = index_memory(args.keys)
    print(
        f"dedupe index: {args.keys:,} keys of 36 B: {per_key:.0f} bytes per key, {per_key * args.keys / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
