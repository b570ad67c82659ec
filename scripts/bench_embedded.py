#!/usr/bin/env python3
"""Benchmark the embedded Wal on this machine and print a table (issue 2's targets).

Rows: appends/s for 100 B / 1 KB / 10 KB values under each fsync policy in one
thread (and 8 threads under Always, to show shared fsyncs); SQLite WAL mode in
the same run as the peer; sequential scan MiB/s of 1 KB records; recovery time
of a 128 MiB active segment after a crash, and reopen time of a cleanly closed
1 GiB log. F (raw 1 KB write + fdatasync per second) is printed first because
this disk's fsync time swings between runs: compare ratios from one run.

    python scripts/bench_embedded.py [--seconds 1.0] [--dir /path/on/the/disk] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig, open_reader  # noqa: E402
from nori_wal.codec import encode_record  # noqa: E402

MiB = 1024 * 1024


def measure_f(d: str, seconds: float = 1.0) -> float:
    path = os.path.join(d, "f.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    rec, n, end = os.urandom(1024), 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        os.write(fd, rec)
        os.fdatasync(fd)
        n += 1
    os.close(fd)
    os.unlink(path)
    return n / seconds


def bench_appends(d: str, policy: str, size: int, threads: int, seconds: float) -> float:
    shutil.rmtree(d, ignore_errors=True)
    wal, _ = Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.parse(policy)))
    value = os.urandom(size)
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        rec = Record.put(b"key-%d" % i, value)
        n = 0
        while True:
            for _ in range(64):
                wal.append(rec)
            n += 64
            if time.perf_counter() > stop:
                break
        counts[i] = n

    t0 = time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rate = sum(counts) / (time.perf_counter() - t0)
    wal.close()
    shutil.rmtree(d, ignore_errors=True)
    return rate


def bench_sqlite(d: str, sync: str, size: int, seconds: float) -> float:
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "peer.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, data BLOB)")
    blob, n, stop = os.urandom(size), 0, time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < stop:
        for _ in range(16):
            db.execute("INSERT INTO log(data) VALUES (?)", (blob,))
        n += 16
    rate = n / (time.perf_counter() - t0)
    db.close()
    shutil.rmtree(d, ignore_errors=True)
    return rate


def fill(d: str, total_bytes: int, seg: int) -> int:
    """Write ``total_bytes`` of 1 KB records (fsync policy os); returns the record count."""
    wal, _ = Wal.open(WalConfig(dir=d, max_segment_size=seg, fsync_policy=FsyncPolicy.os()))
    recs = [Record.put(b"key-%06d" % i, os.urandom(1000)) for i in range(1000)]
    n, written, frame = 0, 0, len(encode_record(recs[0]))
    while written < total_bytes:
        written += frame * len(recs)
        wal.append_batch(recs)
        n += len(recs)
    wal.close()
    return n


def bench_scan(d: str) -> tuple[float, int]:
    """Read every record; MiB/s of segment file bytes."""
    nbytes = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".wal"))
    t0 = time.perf_counter()
    n = 0
    with open_reader(d, Position(0, 0)) as r:
        for _rec, _pos in r:
            n += 1
    return nbytes / MiB / (time.perf_counter() - t0), n


def crash_active_segment(d: str) -> int:
    """Make the last segment look like the writer died: remove its clean-close seal."""
    from nori_wal.codec import SEAL_FRAME_SIZE

    last = max(f for f in os.listdir(d) if f.endswith(".wal"))
    path = os.path.join(d, last)
    size = os.path.getsize(path) - SEAL_FRAME_SIZE
    with open(path, "r+b") as f:
        f.truncate(size)
    return size


def drop_caches_hint() -> str:
    return "page cache warm (the log was just written)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per append cell")
    ap.add_argument("--dir", default=None, help="scratch directory on the disk to measure")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the targets)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="nori-bench-", dir=args.dir)
    try:
        f = measure_f(root)
        print(f"F = {f:,.0f} appends+fdatasync/s (1 KB, 1 s loop)\n")
        print(f"{'workload':<34} {'result':>16}  {'target / peer':<30}")
        print("-" * 84)
        sizes = [100, 1024, 10240]
        results: dict[tuple[str, int, int], float] = {}
        for policy in ["always", "batch:5ms", "os"]:
            for size in sizes:
                r = bench_appends(os.path.join(root, "a"), policy, size, 1, args.seconds)
                results[(policy, size, 1)] = r
                target = ">= 150,000/s" if (policy, size) == ("os", 100) else ""
                print(
                    f"{'append ' + policy + ' ' + str(size) + ' B, 1 thread':<34} {r:>14,.0f}/s  {target:<30}",
                    flush=True,
                )
        for size in sizes:
            r = bench_appends(os.path.join(root, "a"), "always", size, 8, args.seconds)
            ratio = r / results[("always", size, 1)]
            print(
                f"{'append always ' + str(size) + ' B, 8 threads':<34} {r:>14,.0f}/s  "
                f"{f'{ratio:.1f}x one thread (shared fsyncs)':<30}",
                flush=True,
            )
        for sync in ["FULL", "NORMAL"]:
            r = bench_sqlite(os.path.join(root, "s"), sync, 1024, args.seconds)
            ours = ("always", 1024, 1) if sync == "FULL" else ("os", 1024, 1)
            note = f"nori {ours[0]} 1 KB: {results[ours] / r:.2f}x"
            print(f"{'peer: SQLite WAL ' + sync + ' 1 KB, 1 thr':<34} {r:>14,.0f}/s  {note:<30}", flush=True)

        scan_total = 64 * MiB if args.quick else 256 * MiB
        d = os.path.join(root, "scan")
        fill(d, scan_total, 128 * MiB)
        mibs, n = bench_scan(d)
        print(f"{'sequential scan, 1 KB records':<34} {mibs:>11,.0f} MiB/s  {'>= 400 MiB/s':<30}", flush=True)
        shutil.rmtree(d)

        active = 32 * MiB if args.quick else 128 * MiB
        d = os.path.join(root, "crash")
        fill(d, active - 2 * MiB, active)
        size = crash_active_segment(d)
        t0 = time.perf_counter()
        wal, info = Wal.open(WalConfig(dir=d, max_segment_size=active))
        dt = time.perf_counter() - t0
        wal.close()
        assert info.segments_scanned == 1, info
        print(
            f"{'recover %d MiB active seg (crash)' % (active // MiB):<34} {dt * 1e3:>13,.1f} ms  "
            f"{'%.2f GiB/s (>= 1 GiB/s)' % (size / dt / 2**30):<30}",
            flush=True,
        )
        shutil.rmtree(d)

        total = 128 * MiB if args.quick else 1024 * MiB
        d = os.path.join(root, "clean")
        fill(d, total, 128 * MiB)
        t0 = time.perf_counter()
        wal, info = Wal.open(WalConfig(dir=d))
        dt = time.perf_counter() - t0
        wal.close()
        print(
            f"{'reopen %d MiB log (clean close)' % (total // MiB):<34} {dt * 1e3:>13,.1f} ms  "
            f"{'<= 200 ms; %d segments, %d scanned' % (info.segment_count, info.segments_scanned):<30}",
            flush=True,
        )
        print(f"\nF(end) = {measure_f(root):,.0f}/s; {drop_caches_hint()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
