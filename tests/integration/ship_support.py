"""Helpers for the shipping tests: a real local NATS cluster, reading a stream back, running ``nori-wal ship``.

Tests skip (saying why) when nats-server or nats-py is missing; .ci/run installs nats-server with apt.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Iterator, Optional

import pytest

from nori_wal import Position, Record
from nori_wal.ship.cluster import LocalCluster, find_nats_server

NATS_SERVER = find_nats_server()


def require_nats() -> None:
    if NATS_SERVER is None:
        pytest.skip("nats-server is not installed (not on PATH nor in /usr/sbin): apt-get install nats-server")
    try:
        import nats  # noqa: F401
    except ImportError:
        pytest.skip("nats-py is not installed: pip install 'nori-wal[nats]'")


def start_cluster(n: int = 3) -> LocalCluster:
    require_nats()
    cluster = LocalCluster(n)
    try:
        cluster.wait_ready(timeout=60)
    except BaseException:
        cluster.close()
        raise
    return cluster


async def _quiet(exc: Exception) -> None:
    pass


async def _connect(urls: list[str]) -> Any:
    import nats

    return await nats.connect(
        urls, connect_timeout=2, error_cb=_quiet, max_reconnect_attempts=30, reconnect_time_wait=0.2
    )


def run_async(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def stream_count(urls: list[str], stream: str) -> int:
    """Messages in ``stream`` now (0 when it does not exist yet)."""

    async def go() -> int:
        nc = await _connect(urls)
        try:
            return int((await nc.jetstream(timeout=2).stream_info(stream)).state.messages)
        except Exception:
            return -1
        finally:
            await nc.close()

    return int(run_async(go(), 30))


def read_stream(urls: list[str], stream: str, subject: str) -> list[tuple[int, dict[str, str], bytes]]:
    """Every message of ``stream`` in stream order: (sequence, headers, payload)."""

    async def go() -> list[tuple[int, dict[str, str], bytes]]:
        nc = await _connect(urls)
        try:
            js = nc.jetstream(timeout=10)
            total = (await js.stream_info(stream)).state.messages
            sub = await js.pull_subscribe(subject, durable=None, stream=stream)
            out: list[tuple[int, dict[str, str], bytes]] = []
            while len(out) < total:
                for m in await sub.fetch(min(1000, total - len(out)), timeout=10):
                    out.append((m.metadata.sequence.stream, dict(m.headers or {}), m.data))
                    await m.ack()
            return out
        finally:
            await nc.close()

    return list(run_async(go(), 120))


def create_stream(urls: list[str], stream: str, subject: str, replicas: int = 3, dupe_window: float = 120) -> None:
    async def go() -> None:
        from nats.js.api import StreamConfig

        nc = await _connect(urls)
        try:
            await nc.jetstream(timeout=10).add_stream(
                StreamConfig(name=stream, subjects=[subject], num_replicas=replicas, duplicate_window=dupe_window)
            )
        finally:
            await nc.close()

    run_async(go())


def stream_leader(urls: list[str], stream: str) -> Optional[str]:
    async def go() -> Optional[str]:
        nc = await _connect(urls)
        try:
            info = await nc.jetstream(timeout=5).stream_info(stream)
            return info.cluster.leader if info.cluster else None
        finally:
            await nc.close()

    return run_async(go())  # type: ignore[no-any-return]


def ship_cmd(directory: str, servers: str, stream: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nori_wal.cli", "ship", directory, "--to", servers, "--stream", stream, *extra]


def start_shipper(
    directory: str, servers: str, stream: str, *extra: str, log: Optional[str] = None
) -> "subprocess.Popen[bytes]":
    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(ship_cmd(directory, servers, stream, *extra), stdout=out, stderr=out)
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop(proc: "subprocess.Popen[bytes]", sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def log_records(directory: str) -> list[tuple[Record, Position]]:
    from nori_wal import open_reader

    with open_reader(directory) as reader:
        return [(r._replace(value=bytes(r.value)), p) for r, p in reader]


def tail(path: str, n: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


@pytest.fixture
def ship_log(tmp_path: Any) -> Iterator[str]:
    yield os.path.join(str(tmp_path), "shiplog.txt")


def produce(directory: str, producer: int, count: int, batch: int, pace: float) -> None:
    """A producer process: ``count`` records keyed ``p<producer>-<n>``, retrying across writer restarts."""
    from nori_wal.client import WalClient
    from nori_wal.errors import WalError

    n = 0
    client = WalClient.for_dir(directory, timeout=2.0)
    while n < count:
        records = [Record.put(f"p{producer}-{i}".encode(), os.urandom(60)) for i in range(n, min(count, n + batch))]
        try:
            client.append_batch(records)
        except WalError:  # the writer is restarting: a new client, the same batch again
            client.close()
            time.sleep(0.05)
            client = WalClient.for_dir(directory, timeout=2.0)
            continue
        n += len(records)
        time.sleep(pace)  # pacing, so the faults land while producers still write
    client.close()
