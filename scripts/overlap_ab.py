"""The writer's opt-in flush thread (``--overlap``) against the inline fsync, same run, alternating.

    python scripts/overlap_ab.py              # 3 rounds per cell
    python scripts/overlap_ab.py --rounds 5

Each cell (Always, 1 KB records) runs a writer with and without the flush
thread in turn, the order flipping every round, and prints records/s and the
overlap/inline ratio of each pair: fsync times swing between runs, so only a
pair's ratio means anything.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from typing import Any

from nori_wal import FsyncPolicy, Record, WalClient, WalConfig
from nori_wal.writer_proc import WriterProcess

CELLS = [(1, "sync"), (8, "sync"), (32, "sync"), (8, "batch")]


def producer(endpoint: str, mode: str, seconds: float, ready: Any, start: Any, counts: Any) -> None:
    client = WalClient(endpoint, timeout=30)
    rec = Record.put(b"k", os.urandom(1024))
    batch = [rec] * 100
    client.append(rec)
    ready.put(os.getpid())
    start.wait()
    n, t_end = 0, time.monotonic() + seconds
    while time.monotonic() < t_end:
        if mode == "sync":
            client.append(rec)
            n += 1
        else:
            client.append_batch(batch)
            n += 100
    counts.put(n)
    client.close()


def cell(overlap: bool, producers: int, mode: str, seconds: float) -> float:
    """Records per second of one writer (Always) with ``producers`` producer processes for ``seconds``."""
    d = tempfile.mkdtemp(prefix="overlap-ab-")
    writer = WriterProcess.spawn(WalConfig(os.path.join(d, "wal"), fsync_policy=FsyncPolicy.always()), overlap=overlap)
    try:
        ctx = mp.get_context("fork")
        ready, counts, start = ctx.Queue(), ctx.Queue(), ctx.Event()
        args = (writer.endpoint, mode, seconds, ready, start, counts)
        procs = [ctx.Process(target=producer, args=args) for _ in range(producers)]
        for p in procs:
            p.start()
        for _ in procs:  # every producer connected before the clock starts
            ready.get(timeout=60)
        start.set()
        total = sum(counts.get(timeout=seconds + 60) for _ in procs)
        for p in procs:
            p.join(30)
        return total / seconds
    finally:
        writer.stop()
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per run")
    args = ap.parse_args()
    print(f"Always, 1 KB records, {args.rounds} rounds of {args.seconds:g} s, the order flipping each round")
    print(f"{'N':>3} {'mode':>6} {'inline rec/s':>13} {'overlap rec/s':>14} {'overlap/inline':>15}  pairs")
    for producers, mode in CELLS:
        rates: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for overlap in (False, True) if r % 2 == 0 else (True, False):
                rates[overlap].append(cell(overlap, producers, mode, args.seconds))
        inline, over = (sorted(rates[k])[args.rounds // 2] for k in (False, True))
        ratios = sorted(b / a for a, b in zip(rates[False], rates[True]))
        print(
            f"{producers:>3} {mode:>6} {inline:13,.0f} {over:14,.0f} {ratios[len(ratios) // 2]:15.2f}  "
            + ", ".join(f"{x:.2f}" for x in ratios)
        )


if __name__ == "__main__":
    main()
