#!/usr/bin/env python3
"""Benchmark consumers (issue 21's targets): append-to-consumer latency, and catch-up throughput.

1. Latency: a writer process under Always; a producer appends ``--rate``
   records/s (1,000 by default) for ``--seconds``; a consumer in another
   process yields each record and reports when it got it. Prints p50/p99 of
   (consumer saw it) - (the append was acknowledged), in ms. The stamp is the
   append's send time carried in the value; the ack time is taken from the
   producer's clock, same machine (CLOCK_REALTIME is shared by processes).
   Targets: p50 <= 2 ms, p99 <= 10 ms (a 50 ms polling reader: ~25 ms p50).
   ``--wait push`` (default) waits on the writer's wake-up socket
   (``SubWaiter``), ``--wait poll`` polls DIR/DURABLE every 2 ms
   (``PollWaiter``), ``--wait both`` runs one after the other.
2. Catch-up: ``--backlog`` bytes (1 GiB by default) of ``--record-size``
   records written by an embedded Wal, then a new consumer reads them all
   from the page cache. Prints MiB/s (target >= 400; the scan: ~785), and the
   wall and CPU time per record (CPU time is the steadier figure on a loaded machine).

    python scripts/consumer_bench.py [--rate 1000] [--seconds 5] [--backlog 1GiB] [--record-size 1024]
                                     [--dir /path/on/the/disk] [--wait push|poll|both] [--no-catch-up]
                                     [--no-latency] [--quick]

``--quick`` runs tiny sizes (a smoke test; the figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nori_wal import FsyncPolicy, Record, Wal, WalConfig, open_consumer  # noqa: E402

MiB = 1024 * 1024

FOLLOWER = r"""
import sys, time
from nori_wal import open_consumer
from nori_wal.fs import OS
from nori_wal.waiters import PollWaiter, SubWaiter
d, n, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
waiter = SubWaiter(OS, d) if how == "push" else PollWaiter(OS, d)
out = []
with open_consumer(d, "bench-latency", start="latest", waiter=waiter) as c:
    print("ready", flush=True)
    for record, _ in c:
        out.append((int(record.key), time.time_ns()))
        if len(out) == n:
            break
for seq, t in out:
    print(seq, t)
print("wakeups", getattr(waiter, "wakeups", 0))
"""


def parse_size(text: str) -> int:
    units = {"k": 1024, "m": MiB, "g": 1024 * MiB}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latency(directory: str, rate: int, seconds: float, how: str) -> tuple[float, float, int, int]:
    """(p50 ms, p99 ms, records, wake-up messages) from acknowledgement to the consumer process yielding
    the record; ``how`` is "push" (the writer's wake-ups, SubWaiter) or "poll" (PollWaiter, 2 ms)."""
    from nori_wal.client import WalClient
    from nori_wal.writer_proc import WriterProcess

    n = max(1, int(rate * seconds))
    cfg = WalConfig(dir=directory, fsync_policy=FsyncPolicy.always())
    with WriterProcess.spawn(cfg, timeout=30.0) as writer:
        follower = subprocess.Popen(
            [sys.executable, "-c", FOLLOWER, directory, str(n), how], stdout=subprocess.PIPE, text=True
        )
        try:
            assert follower.stdout is not None and follower.stdout.readline().strip() == "ready"
            acked: dict[int, int] = {}
            with WalClient(writer.endpoint, timeout=10) as client:
                t0 = time.monotonic()
                for i in range(n):
                    due = t0 + i / rate
                    while (now := time.monotonic()) < due:
                        time.sleep(min(0.0005, due - now))
                    client.append(Record.put(b"%d" % i, b"x" * 100))
                    acked[i] = time.time_ns()
            out, _ = follower.communicate(timeout=60 + seconds)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait()
    lat = []
    wakeups = 0
    for line in out.splitlines():
        if line.startswith("wakeups "):
            wakeups = int(line.split()[1])
            continue
        seq, seen = map(int, line.split())
        lat.append(max(0.0, (seen - acked[seq]) / 1e6))
    return percentile(lat, 0.5), percentile(lat, 0.99), len(lat), wakeups


def catch_up(directory: str, backlog: int, record_size: int) -> tuple[float, int, float, float]:
    """(MiB/s, records, wall and CPU us/record) of a new consumer reading ``backlog`` bytes from the page cache."""
    value = os.urandom(record_size)
    batch = [Record.put(b"k", value)] * 256
    with Wal.open(WalConfig(dir=directory, fsync_policy=FsyncPolicy.os()))[0] as wal:
        written = appended = 0
        while written < backlog:
            wal.append_batch(batch)
            written += len(batch) * (record_size + 8)
            appended += len(batch)
        wal.sync()
    for name in os.listdir(directory):  # the backlog written back before the clock starts (it stays cached)
        if name.endswith(".wal"):
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    total = records = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with open_consumer(directory, "bench-catchup") as c:
        for record, _ in c:
            records += 1
            total += len(record.value)
            if records == appended:
                break
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return total / MiB / dt, records, dt / records * 1e6, dc / records * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=1000, help="records/s the producer appends (default 1000)")
    ap.add_argument("--seconds", type=float, default=5.0, help="how long the latency run lasts (default 5)")
    ap.add_argument("--backlog", type=parse_size, default=1024 * MiB, help="catch-up backlog (default 1GiB)")
    ap.add_argument("--record-size", type=int, default=1024, help="value bytes per catch-up record (default 1024)")
    ap.add_argument("--dir", default=None, help="where to put the logs (default: a temp dir)")
    ap.add_argument(
        "--wait",
        choices=("push", "poll", "both"),
        default="push",
        help="how the consumer waits: the writer's wake-ups (push, the default), a 2 ms poll of DIR/DURABLE "
        "(poll), or one run of each (both)",
    )
    ap.add_argument("--no-catch-up", action="store_true", help="skip the catch-up run")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency run")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    args = ap.parse_args()
    if args.quick:
        args.rate, args.seconds, args.backlog = 200, 0.5, 2 * MiB
    base = tempfile.mkdtemp(prefix="consumer-bench-", dir=args.dir)
    try:
        for how in () if args.no_latency else ("push", "poll") if args.wait == "both" else (args.wait,):
            p50, p99, n, wakeups = latency(os.path.join(base, f"latency-{how}"), args.rate, args.seconds, how)
            print(
                f"append-to-consumer latency ({how}), Always, {args.rate} records/s, {n} records: "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms ({wakeups} wake-up messages)"
            )
        if args.no_catch_up:
            return 0
        mibs, records, wall_us, cpu_us = catch_up(os.path.join(base, "catchup"), args.backlog, args.record_size)
        print(
            f"catch-up over {args.backlog / MiB:.0f} MiB ({records} records of {args.record_size} B): {mibs:.0f} MiB/s "
            f"({wall_us:.2f} us/record; CPU {cpu_us:.2f} us/record)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
