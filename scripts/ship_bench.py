#!/usr/bin/env python3
"""Benchmark ``nori-wal ship`` against a bare nats-py publisher, same cluster, same run (issue 23's targets).

Starts a private 3-node JetStream cluster on 127.0.0.1 (nats-server must be installed), then:

1. bare: a nats-py publisher sends N 1 KB messages with ``Nats-Msg-Id`` to an R3
   stream, ``--in-flight`` at once (the yardstick, as /work/shared/bench/nats_peer.py);
2. ship: a log of N 1 KB records is shipped by ``nori-wal ship`` (its own process,
   ``--max-in-flight`` the same) to another R3 stream; the rate is timed from the
   stream's first message to its last (polled every 10 ms);
3. latency: a writer process takes 1,000 appends/s from a WalClient for
   ``--latency-seconds``; ``nori-wal ship`` forwards them; an ordered JetStream
   consumer reads the stream; append-to-stream latency = read time - append time
   (same host, same clock), p50 / p99.

Target: ship >= 80% of bare's records/s; latency p50 <= 20 ms.

    python scripts/ship_bench.py [--records 50000] [--in-flight 256] [--latency-seconds 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nori_wal import FsyncPolicy, Record, Wal, WalConfig  # noqa: E402
from nori_wal.ship.cluster import LocalCluster  # noqa: E402

MiB = 1024 * 1024
VALUE = 1024


async def _quiet(exc: Exception) -> None:
    pass


async def _connect(urls: list[str]) -> Any:
    import nats

    return await nats.connect(urls, error_cb=_quiet)


async def _add_stream(js: Any, name: str) -> None:
    from nats.js.api import StreamConfig

    for _ in range(300):
        try:
            await js.add_stream(StreamConfig(name=name, subjects=[name], num_replicas=3, duplicate_window=120))
            return
        except Exception:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"could not create stream {name}")


async def bare(urls: list[str], n: int, depth: int, stream: str = "BARE") -> tuple[float, float]:
    """Records/s of a bare nats-py publisher with ``depth`` publishes in flight, and its CPU us/record."""
    nc = await _connect(urls)
    js = nc.jetstream(timeout=10)
    await _add_stream(js, stream)
    payload = os.urandom(VALUE)
    sem = asyncio.Semaphore(depth)

    async def pub(i: int) -> None:
        async with sem:
            await js.publish(stream, payload, headers={"Nats-Msg-Id": f"bare-{i}"})

    cpu0 = time.process_time()
    await asyncio.gather(*(pub(i) for i in range(n)))
    cpu = (time.process_time() - cpu0) / n * 1e6
    try:
        return await stored_rate(js, stream), cpu
    finally:
        await nc.close()


async def stored_rate(js: Any, stream: str) -> float:
    """Records/s between the stream's first and last message, by the times the stream stored them."""
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    t0 = _ts((await js.get_msg(stream, first)).time)
    t1 = _ts((await js.get_msg(stream, last)).time)
    return (last - first) / max(1e-9, t1 - t0)


def _ts(value: Any) -> float:
    """A stored message's time (RFC 3339 with nanoseconds, or a datetime) in seconds."""
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    text = str(value).rstrip("Z")
    whole, _, frac = text.partition(".")
    from datetime import datetime, timezone

    secs = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return secs + float("0." + (frac or "0"))


def make_log(directory: str, n: int) -> None:
    wal, _ = Wal.open(WalConfig(dir=directory, fsync_policy=FsyncPolicy.os()))
    with wal:
        for start in range(0, n, 1000):
            wal.append_batch([Record.put(b"k%d" % i, os.urandom(VALUE)) for i in range(start, min(n, start + 1000))])
        wal.sync()


def ship_cmd(directory: str, servers: str, stream: str, depth: int) -> list[str]:
    return [
        sys.executable, "-m", "nori_wal.cli", "ship", directory, "--to", servers, "--stream", stream,
        "--create-stream", "--replicas", "3", "--max-in-flight", str(depth), "--progress-interval", "3600",
    ]  # fmt: skip


async def _count(js: Any, stream: str) -> int:
    try:
        return int((await js.stream_info(stream)).state.messages)
    except Exception:
        return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc), 0.0 where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


async def ship_rate(
    urls: list[str], servers: str, directory: str, n: int, depth: int, stream: str = "SHIP"
) -> tuple[float, float]:
    """Records/s of ``nori-wal ship`` (its own process), and its CPU us/record from its session start to the end."""
    proc = subprocess.Popen(ship_cmd(directory, servers, stream, depth), stderr=subprocess.PIPE, text=True)
    started: list[float] = []  # the shipper's CPU seconds when it logged the start of its session

    def watch_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if not started and " to stream " in line:
                started.append(cpu_seconds(proc.pid))

    threading.Thread(target=watch_log, daemon=True).start()
    nc = await _connect(urls)
    js = nc.jetstream(timeout=5)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if await _count(js, stream) >= n:
                cpu = (cpu_seconds(proc.pid) - (started[0] if started else 0.0)) / n * 1e6
                return await stored_rate(js, stream), cpu
            await asyncio.sleep(0.02)
        raise RuntimeError("ship did not finish within 600 s")
    finally:
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _produce(directory: str, seconds: float, rate: int, stop: threading.Event) -> int:
    """Append at ``rate`` records/s from ``THREADS`` threads (a synchronous append waits for its fsync)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(pool.map(lambda _: _produce_one(directory, seconds, rate / THREADS, stop), range(THREADS)))


THREADS = 8


def _produce_one(directory: str, seconds: float, rate: float, stop: threading.Event) -> int:
    from nori_wal.client import WalClient

    sent = 0
    with WalClient.for_dir(directory) as client:
        t0 = time.perf_counter()
        while not stop.is_set() and time.perf_counter() - t0 < seconds:
            due = t0 + sent / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)  # pacing: 1,000 records/s
            client.append(Record.put(b"lat", struct.pack("<q", time.time_ns()) + bytes(VALUE - 8)))
            sent += 1
    return sent


async def latency(urls: list[str], servers: str, directory: str, seconds: float, stream: str = "LAT") -> list[float]:
    from nori_wal.writer_proc import WriterProcess

    writer = WriterProcess.spawn(WalConfig(dir=directory, fsync_policy=FsyncPolicy.batch(0.005)))
    proc = subprocess.Popen(ship_cmd(directory, servers, stream, 256), stderr=subprocess.DEVNULL)
    nc = await _connect(urls)
    js = nc.jetstream(timeout=5)
    samples: list[float] = []
    try:
        while not await _stream_exists(js, stream):
            await asyncio.sleep(0.05)
        sub = await js.subscribe(stream, ordered_consumer=True)
        stop = threading.Event()
        producer = asyncio.ensure_future(asyncio.to_thread(_produce, directory, seconds, 1000, stop))
        sent = None
        deadline = time.monotonic() + seconds + 60
        while time.monotonic() < deadline and (sent is None or len(samples) < sent):
            try:
                msg = await sub.next_msg(timeout=1)
            except Exception:
                if producer.done():
                    sent = producer.result()
                continue
            (t_ns,) = struct.unpack_from("<q", msg.data)
            samples.append((time.time_ns() - t_ns) / 1e6)
            if producer.done():
                sent = producer.result()
        stop.set()
        await producer
    finally:
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        writer.stop()
    return samples


async def _stream_exists(js: Any, name: str) -> bool:
    try:
        await js.stream_info(name)
        return True
    except Exception:
        return False


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def paired_round(cluster: LocalCluster, base: str, n: int, depth: int, r: int) -> tuple[float, float, float, float]:
    """One bare run and one ship run on fresh streams (bare first in even rounds): rates and CPU us/record."""
    log_dir = os.path.join(base, f"log{r}")
    make_log(log_dir, n)
    results: dict[str, tuple[float, float]] = {}
    for who in ("bare", "ship") if r % 2 == 0 else ("ship", "bare"):
        if who == "bare":
            results[who] = asyncio.run(bare(cluster.urls, n, depth, f"BARE{r}"))
        else:
            results[who] = asyncio.run(ship_rate(cluster.urls, cluster.servers, log_dir, n, depth, f"SHIP{r}"))
    shutil.rmtree(log_dir, ignore_errors=True)
    return (*results["bare"], *results["ship"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--latency-seconds", type=float, default=10.0, help="0 skips the latency run")
    ap.add_argument("--rounds", type=int, default=1, help="bare and ship this many times, alternating who goes first")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the benchmark runs")
    args = ap.parse_args()
    if args.quick:
        args.records, args.latency_seconds = 2_000, 2.0
    base = tempfile.mkdtemp(prefix="ship-bench-")
    cluster = LocalCluster(3)
    n, depth = args.records, args.in_flight
    runs: list[tuple[float, float, float, float]] = []
    try:
        cluster.wait_ready(timeout=60)
        for r in range(args.rounds):
            runs.append(paired_round(cluster, base, n, depth, r))
            if args.rounds > 1:
                b, cb, s, cs = runs[-1]
                print(f"round {r + 1}: bare {b:,.0f} ({cb:.0f} us/rec), ship {s:,.0f} ({cs:.0f} us/rec): {s / b:.0%}")
        lat = (
            asyncio.run(latency(cluster.urls, cluster.servers, os.path.join(base, "lat"), args.latency_seconds))
            if args.latency_seconds > 0
            else []
        )
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    mib = VALUE / MiB
    r_bare, cpu_bare, r_ship, cpu_ship = (statistics.median(col) for col in zip(*runs))
    ratio = statistics.median(s / b for b, _, s, _ in runs)
    rounds = f", median of {len(runs)} alternating rounds" if len(runs) > 1 else ""
    print(f"3-node R3 stream, 1 KB records, {depth} in flight, {n:,} records{rounds}")
    print("| publisher | records/s | MiB/s | CPU us/record |\n|---|---:|---:|---:|")
    print(f"| bare nats-py | {r_bare:,.0f} | {r_bare * mib:.1f} | {cpu_bare:.0f} |")
    print(f"| nori-wal ship | {r_ship:,.0f} | {r_ship * mib:.1f} | {cpu_ship:.0f} |")
    print(f"ship / bare: {ratio:.0%} (target >= 80%)")
    if lat:
        print(
            f"append-to-stream latency at 1,000 records/s ({len(lat):,} records): "
            f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 99):.1f} ms (target p50 <= 20 ms)"
        )
    else:
        print("append-to-stream latency: no samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
