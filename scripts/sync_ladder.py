#!/usr/bin/env python3
"""Where a synchronous producer's time goes: nori-wal's writer and client against the yardstick, in turns.

At N synchronous producers (one 1 KB append in flight each, Always) it runs,
in alternating slices so that the disk's and the machine's drift cancel
(A B C, C B A, ...), three systems:

  nori       ``WalClient.append(record)``: the producer frames and checksums the
             record, the writer validates it, the client checks the reply;
  bare       the same writer; each producer sends one request it framed once,
             before the clock, and reads the reply without looking at it: what
             the writer alone costs, without the client's per-call work;
  yardstick  the ideal group-commit toy (``nori_wal.load.peers.Yardstick``): no
             framing, no validation.

``bare`` against ``yardstick`` compares the writers; ``nori`` against ``bare``
is the price of the client's per-call work (framing, CRC32C, the reply check,
the API). On a two-core machine past 8 producers the CPU is the limit, so that
price is paid in throughput. Slices are short and many, so a drift of the
machine is shared by the three: the ratios are steadier than ``nori-wal load``'s.

``--cpu`` (Linux) also prints where each system's CPU went, in microseconds
per acknowledged record, from ``/proc``: the machine's busy and idle time
during its slices, its producer processes and its writer process (each with
its ZeroMQ I/O thread; the writer's includes the kernel's work in its fsyncs).

    python scripts/sync_ladder.py [--producers 8,32] [--slices 10] [--slice-seconds 0.4] [--cpu] [--dir DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nori_wal import FsyncPolicy, WalConfig  # noqa: E402
from nori_wal.load.cells import yard_frame  # noqa: E402
from nori_wal.load.peers import Yardstick  # noqa: E402
from nori_wal.load.plan import RECORD_BYTES  # noqa: E402
from nori_wal.load.probes import measure_f  # noqa: E402

SYSTEMS = ("nori", "bare", "yardstick")
SETUP_TIMEOUT = 60.0


def _operation(system: str, endpoint: str) -> Callable[[], Any]:
    """One producer's call for ``system``, connected and warmed up (the first call is not counted)."""
    import zmq

    from nori_wal import protocol as P
    from nori_wal.client import WalClient
    from nori_wal.codec import encode_record
    from nori_wal.record import Record

    record = Record.put(b"p%05d" % os.getpid(), os.urandom(RECORD_BYTES))
    if system == "nori":
        client = WalClient(endpoint, timeout=30)
        op: Callable[[], Any] = lambda: client.append(record)  # noqa: E731
    else:
        sock = zmq.Context().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 30_000)
        sock.connect(endpoint)
        msg = yard_frame() if system == "yardstick" else encode_record(record, P.encode_append(1, 1))

        def op() -> Any:
            sock.send(msg)
            return sock.recv()

    op()
    return op


def _producer(system: str, endpoint: str, turn: Any, running: Any, counts: Any, index: int, ready: Any) -> None:
    """Run ``system``'s call while ``running`` is 1; sleep on ``turn`` between slices; -1 ends."""
    op = _operation(system, endpoint)
    ready.release()
    while True:
        turn.wait()
        if running.value < 0:
            return
        n = 0
        while running.value == 1:
            op()
            n += 1
        counts[index] += n


def _machine_ticks() -> tuple[int, int]:
    """(busy, idle) clock ticks of the whole machine so far (``/proc/stat``; idle includes iowait)."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal, idle + iowait


def _process_ticks(pids: list[int]) -> int:
    """User plus system clock ticks used so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone: its ticks are lost to the sum, which then reads low
        total += int(fields[11]) + int(fields[12])
    return total


class _CpuMeter:
    """Clock ticks a system spent during its slices: machine busy, machine idle, producers, writer."""

    def __init__(self, producer_pids: list[int], writer_pid: int | None):
        self._pids = producer_pids
        self._writer = [writer_pid] if writer_pid else []
        self.ticks = [0, 0, 0, 0]
        self._start: list[int] = []

    def _now(self) -> list[int]:
        return [*_machine_ticks(), _process_ticks(self._pids), _process_ticks(self._writer)]

    def start(self) -> None:
        self._start = self._now()

    def stop(self) -> None:
        self.ticks = [t + b - a for t, a, b in zip(self.ticks, self._start, self._now())]

    def per_record(self, records: int) -> list[float]:
        """The four figures in microseconds per record."""
        us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
        return [t * us_per_tick / max(1, records) for t in self.ticks]


class _System:
    """One system's producers, which run only during its slices."""

    def __init__(self, ctx: Any, name: str, endpoint: str, producers: int, ready: Any):
        self.name = name
        self.turn = ctx.Event()
        self.running = ctx.RawValue("i", 0)
        self.counts = ctx.RawArray("q", producers)
        self.seconds = 0.0
        self.procs = [
            ctx.Process(
                target=_producer, daemon=True, args=(name, endpoint, self.turn, self.running, self.counts, i, ready)
            )
            for i in range(producers)
        ]
        for p in self.procs:
            p.start()

    def run_slice(self, seconds: float) -> None:
        self.running.value = 1
        self.turn.set()
        t0 = time.perf_counter()
        time.sleep(seconds)
        self.running.value = 0
        self.turn.clear()
        self.seconds += time.perf_counter() - t0
        time.sleep(0.02)  # the slice's last calls finish before the next system starts

    def rate(self) -> float:
        return sum(self.counts) / self.seconds if self.seconds else 0.0

    def close(self) -> None:
        self.running.value = -1
        self.turn.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)


def run_ladder(
    n: int, slices: int, slice_s: float, base: str | None, cpu: bool = False
) -> dict[str, tuple[float, float, list[float] | None]]:
    """{system: (records/s, records per fsync, CPU per record or None)} at ``n`` producers.

    The CPU figures (``cpu``): see ``_CpuMeter.per_record``.
    """
    from nori_wal.client import WalClient
    from nori_wal.writer_proc import WriterProcess

    ctx = mp.get_context("spawn")
    d = tempfile.mkdtemp(prefix="nori-ladder-", dir=base)
    writer = WriterProcess.spawn(WalConfig(dir=os.path.join(d, "wal"), fsync_policy=FsyncPolicy.always()))
    sock_dir = tempfile.mkdtemp(prefix="nori-ladder-sock-")  # a short ipc path, whatever --dir is
    yard = Yardstick("always", d, sock_dir)
    control = WalClient(writer.endpoint, timeout=30)

    def synced() -> dict[str, tuple[int, int]]:
        """(records, fsyncs) so far, per system: the writer's INFO counters, the yardstick's own."""
        info = control.info()
        groups, messages = yard.counts()
        return {
            "nori": (info["records"], info["fsyncs"]),
            "bare": (info["records"], info["fsyncs"]),
            "yardstick": (messages, groups),
        }

    systems: list[_System] = []
    try:
        ready = ctx.Semaphore(0)
        for name in SYSTEMS:
            systems.append(_System(ctx, name, yard.endpoint if name == "yardstick" else writer.endpoint, n, ready))
        for _ in range(n * len(systems)):
            if not ready.acquire(timeout=SETUP_TIMEOUT):
                raise RuntimeError("producers did not connect in time")
        grown = {name: [0, 0] for name in SYSTEMS}
        meters = {
            s.name: _CpuMeter([p.pid for p in s.procs if p.pid], yard.pid if s.name == "yardstick" else writer.pid)
            for s in systems
        }
        for k in range(slices):
            for s in systems if k % 2 == 0 else systems[::-1]:
                before = synced()[s.name]
                if cpu:
                    meters[s.name].start()
                s.run_slice(slice_s)
                if cpu:
                    meters[s.name].stop()
                after = synced()[s.name]
                grown[s.name][0] += after[0] - before[0]
                grown[s.name][1] += after[1] - before[1]
            control.delete_segments_before(control.current_position())  # keep the disk bounded
        return {
            s.name: (
                s.rate(),
                grown[s.name][0] / max(1, grown[s.name][1]),
                meters[s.name].per_record(grown[s.name][0]) if cpu else None,
            )
            for s in systems
        }
    finally:
        for s in systems:
            s.close()
        control.close()
        writer.stop()
        yard.close()
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--producers", default="8,32", help="producer counts (default 8,32)")
    ap.add_argument("--slices", type=int, default=10, help="slices per system (default 10)")
    ap.add_argument("--slice-seconds", type=float, default=0.4, help="length of one slice (default 0.4)")
    ap.add_argument("--cpu", action="store_true", help="also print CPU per record (Linux: reads /proc)")
    ap.add_argument("--dir", default=None, help="where to put the logs (default: the system temp dir)")
    args = ap.parse_args(argv)
    if args.cpu and not os.path.exists("/proc/stat"):
        ap.error("--cpu reads /proc/stat and /proc/PID/stat (Linux)")
    counts = [int(x) for x in args.producers.split(",")]
    if not counts or min(counts) < 1 or args.slices < 1 or not args.slice_seconds > 0:
        ap.error("--producers, --slices and --slice-seconds must be positive")
    probe = tempfile.mkdtemp(prefix="nori-ladder-f-", dir=args.dir)
    try:
        f = measure_f(probe, 1.0)
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    print(
        f"nori-wal sync ladder: Always, 1 KB records, {args.slices} x {args.slice_seconds:g} s slices per system, "
        f"{os.cpu_count()} CPUs; F = {f:,.0f} appends+fdatasync/s"
    )
    cpu_head = f" {'busy us':>8} {'idle us':>8} {'prod us':>8} {'writer us':>9}" if args.cpu else ""
    print(f"{'producers':>9}  {'system':<10} {'acked rec/s':>12} {'x yardstick':>12} {'rec/fsync':>10}{cpu_head}")
    for n in counts:
        res = run_ladder(n, args.slices, args.slice_seconds, args.dir, args.cpu)
        yard = res["yardstick"][0]
        for name in SYSTEMS:
            rate, group, per_record = res[name]
            cpu_cols = "".join(f" {x:>{w}.0f}" for x, w in zip(per_record, (8, 8, 8, 9))) if per_record else ""
            print(
                f"{n:>9}  {name:<10} {rate:>12,.0f} {rate / yard if yard else 0:>11.2f}x {group:>10.1f}{cpu_cols}",
                flush=True,
            )
        print()
    if args.cpu:
        print(
            "CPU in microseconds per acknowledged record during the system's slices: the machine busy and idle,\n"
            "its producer processes, its writer process (ZeroMQ I/O threads and the kernel's fsync work included)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
