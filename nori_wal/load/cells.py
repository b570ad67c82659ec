"""The cells' work: what one producer process does for each system, timed to the slice's shared deadline.

Each runner sets up (connects, one warm-up call that is not counted), calls
``ready()``, waits on the ``Gate`` for the slice to start and then makes the
one call a user of that system would make, in a loop, until the deadline
every producer of the slice shares. It returns its ``Timed`` numbers.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from array import array
from collections import deque
from typing import Any, Callable

from .plan import CLIENT_TIMEOUT, RECORD_BYTES, Task, Timed


class Gate:
    """What a producer waits on: the parent's go, and the deadline every producer of the slice shares."""

    def __init__(self, go: Any, deadline: Any):
        self._go, self._deadline = go, deadline

    def wait(self) -> float:
        """Block until the slice starts; its end, as ``time.monotonic()`` (the parent wrote it before go)."""
        self._go.wait()
        return float(self._deadline.value)


NOT_ACKED = object()  # what a timed op returns when its records were not acknowledged (SQLite: locked)


def timed_loop(op: Callable[[Any], Any], arg: Any, per: int, end: float) -> Timed:
    """Call ``op(arg)`` until the shared deadline ``end``; returns (acked records, start, end, latencies s).

    Each call acknowledges ``per`` records unless it returns NOT_ACKED. Every
    system's op is the one call a user would make (``client.append``, a
    socket round trip, an INSERT), so no system pays for an extra wrapper.
    Times are ``time.monotonic()``, comparable across the producer processes.
    """
    lat: array[float] = array("d")
    acked = 0
    clock = time.monotonic
    start = t0 = clock()
    while t0 < end:
        missed = op(arg) is NOT_ACKED
        t1 = clock()
        if not missed:
            lat.append(t1 - t0)
            acked += per
        t0 = t1
    return acked, start, t0, lat


def _records(index: int, count: int) -> list[Any]:
    from ..record import Record

    value = os.urandom(RECORD_BYTES)
    return [Record.put(b"p%04d-%06d" % (index, i), value) for i in range(count)]


def _run_nori(task: Task, ready: Callable[[], None], go: Gate) -> Timed:
    from ..client import WalClient

    mode = task["mode"]
    if mode == "pipelined":
        return asyncio.run(_run_nori_pipelined(task, ready, go))
    recs = _records(task["index"], task["batch_size"] if mode == "batch" else 1)
    client = WalClient(task["endpoint"], timeout=CLIENT_TIMEOUT)
    try:
        if mode == "submit":
            client.append(recs[0])  # warm-up: connects; not counted
            ready()
            return submit_loop(client, recs[0], task["depth"], go.wait())
        op: Callable[[Any], Any] = client.append if mode == "sync" else client.append_batch
        arg = recs[0] if mode == "sync" else recs
        op(arg)  # warm-up: connects; not counted
        ready()
        return timed_loop(op, arg, 1 if mode == "sync" else len(recs), go.wait())
    finally:
        client.close()


def submit_loop(client: Any, rec: Any, depth: int, end: float) -> Timed:
    """Keep ``depth`` appends in flight with ``WalClient.submit`` until ``end``; latency = submit to result."""
    lat: array[float] = array("d")
    pending: deque[tuple[float, Any]] = deque()
    perf = time.monotonic
    start = now = perf()
    while now < end:
        while len(pending) < depth:
            pending.append((perf(), client.submit(rec)))
        t0, p = pending.popleft()
        p.result()
        now = perf()
        lat.append(now - t0)
        while pending and pending[0][1].done():  # collect every ack already here, then refill at once
            t0, p = pending.popleft()
            p.result()
            lat.append(now - t0)
    while pending:  # what is still in flight counts once acknowledged
        t0, p = pending.popleft()
        p.result()
        now = perf()
        lat.append(now - t0)
    return len(lat), start, now, lat


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def _run_nori_pipelined(task: Task, ready: Callable[[], None], go: Gate) -> Timed:
    from ..client import AsyncWalClient

    depth = task["depth"]
    recs = _records(task["index"], depth)
    client = AsyncWalClient(task["endpoint"], timeout=CLIENT_TIMEOUT)
    try:
        await client.append(recs[0])  # warm-up: connects; not counted
        ready()
        end = go.wait()  # blocks the loop on purpose: nothing else runs yet
        lat: array[float] = array("d")
        start = time.monotonic()

        async def lane(rec: Any) -> int:
            n = 0
            t0 = time.monotonic()
            while t0 < end:
                await client.append(rec)
                t1 = time.monotonic()
                lat.append(t1 - t0)
                n += 1
                t0 = t1
            return n

        counts = await asyncio.gather(*(lane(r) for r in recs))
        return sum(counts), start, time.monotonic(), lat
    finally:
        await _maybe_await(client.close())


def _run_sqlite(task: Task, ready: Callable[[], None], go: Gate) -> Timed:
    import sqlite3

    db = sqlite3.connect(task["path"], isolation_level=None, timeout=10.0)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA synchronous=FULL")
        blob = os.urandom(RECORD_BYTES)

        def op(row: tuple[bytes]) -> Any:
            try:
                return db.execute("INSERT INTO log(data) VALUES (?)", row)
            except sqlite3.OperationalError:  # "database is locked" past busy_timeout
                return NOT_ACKED

        ready()
        return timed_loop(op, (blob,), 1, go.wait())
    finally:
        db.close()


def yard_frame() -> bytes:
    import zlib

    body = os.urandom(RECORD_BYTES - 8)
    return len(body).to_bytes(4, "little") + zlib.crc32(body).to_bytes(4, "little") + body


def _run_yard(task: Task, ready: Callable[[], None], go: Gate) -> Timed:
    import zmq

    per = task["batch_size"] if task["mode"] == "batch" else 1
    msg = yard_frame() * per
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(CLIENT_TIMEOUT * 1000))
    try:
        sock.connect(task["endpoint"])

        def op(m: bytes) -> Any:
            sock.send(m)
            return sock.recv()

        op(msg)
        ready()
        return timed_loop(op, msg, per, go.wait())
    finally:
        sock.close()
        ctx.term()


def _run_redis(task: Task, ready: Callable[[], None], go: Gate) -> Timed:
    import redis

    r = redis.Redis(port=task["port"])
    blob = os.urandom(RECORD_BYTES)
    per = {"sync": 1, "pipelined": task["depth"], "submit": task["depth"], "batch": task["batch_size"]}[task["mode"]]
    try:
        fields = {"d": blob}
        op: Callable[[Any], Any]
        if per == 1:

            def op(f: dict[str, bytes]) -> Any:
                return r.xadd("log", f)  # type: ignore[arg-type]
        else:

            def op(f: dict[str, bytes]) -> Any:
                p = r.pipeline(transaction=False)
                for _ in range(per):
                    p.xadd("log", f)  # type: ignore[arg-type]
                return p.execute()

        r.ping()
        ready()
        return timed_loop(op, fields, per, go.wait())
    finally:
        r.close()


RUNNERS: dict[str, Callable[[Task, Callable[[], None], Gate], Timed]] = {
    "nori": _run_nori,
    "sqlite": _run_sqlite,
    "yardstick": _run_yard,
    "redis": _run_redis,
}
