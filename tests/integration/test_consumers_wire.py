"""Consumers beside a writer process: GC over the wire says which cursor held it back, ``serve
--max-retained-bytes``, and per-consumer lag on ``serve --metrics-port``. Real processes and sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from nori_wal import ConsumerExpiredError, FsyncPolicy, Record, WalConfig, drop_consumer, open_consumer
from nori_wal.client import AsyncWalClient, WalClient
from nori_wal.writer_proc.process import WriterProcess

DEADLINE = 30.0


def recs(n, size=500):
    return [Record.put(b"k%d" % i, os.urandom(size)) for i in range(n)]


def _serve(serve_process, directory, *extra):
    p = serve_process("--dir", directory, "--fsync", "always", "--max-segment-size", "8192", *extra)
    assert p.stdout is not None
    endpoint = p.stdout.readline().strip()
    assert endpoint.startswith(("ipc://", "tcp://")), p.stderr.read() if p.poll() is not None else endpoint
    return endpoint


def test_client_gc_says_which_cursor_held_it_back(tmp_path, spawn_writer, caplog):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=8192, fsync_policy=FsyncPolicy.always()))
    with WalClient(w.endpoint, timeout=10) as client:
        assert client.last_gc is None
        open_consumer(d, "indexer", start="latest").close()  # holds segment 0 on
        pos = client.append_batch(recs(40))
        with caplog.at_level(logging.WARNING, logger="nori_wal.client"):
            assert client.delete_segments_before(pos[-1]) == 0
        plan = client.last_gc
        assert plan is not None and plan.delete == [] and plan.held_back[0] == 0
        assert [h.name for h in plan.held_by] == ["indexer"]
        assert "consumer 'indexer'" in caplog.text and "held back" in caplog.text
        drop_consumer(d, "indexer")
        assert client.delete_segments_before(pos[-1]) == pos[-1].segment_id
        assert client.last_gc.held_back == [] and client.last_gc.delete == list(range(pos[-1].segment_id))


def test_async_client_gc_keeps_the_plan_too(tmp_path, spawn_writer):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=8192, fsync_policy=FsyncPolicy.always()))

    async def main():
        async with AsyncWalClient(w.endpoint, timeout=10) as client:
            open_consumer(d, "async-held", start="latest").close()
            pos = await client.append_batch(recs(40))
            assert await client.delete_segments_before(pos[-1]) == 0
            assert [h.name for h in client.last_gc.held_by] == ["async-held"]

    asyncio.run(main())


def test_gc_cli_through_the_writer_names_the_cursor(tmp_path, spawn_writer):
    d = str(tmp_path / "wal")
    w: WriterProcess = spawn_writer(WalConfig(dir=d, max_segment_size=8192, fsync_policy=FsyncPolicy.always()))
    with WalClient(w.endpoint, timeout=10) as client:
        open_consumer(d, "cli-held", start="latest").close()
        pos = client.append_batch(recs(40))
    out = subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "gc", d, "--before", str(pos[-1])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "through the writer process" in out.stdout and "consumer 'cli-held'" in out.stdout


def test_serve_max_retained_bytes_expires_the_lagging_consumer(tmp_path, serve_process):
    d = str(tmp_path / "wal")
    os.makedirs(d)
    open_consumer(d, "lagger").close()  # registered at the start: holds everything
    endpoint = _serve(serve_process, d, "--max-retained-bytes", "20000")
    with WalClient(endpoint, timeout=10) as client:
        pos = client.append_batch(recs(100))
        client.delete_segments_before(pos[-1])
        plan = client.last_gc
    assert plan is not None and [e.name for e in plan.expire] == ["lagger"]
    with pytest.raises(ConsumerExpiredError, match="lagger"):
        open_consumer(d, "lagger")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port):
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return r.read().decode()
        except OSError:
            assert time.monotonic() < deadline, "the exporter never answered"
            time.sleep(0.05)


def test_serve_exports_each_consumers_lag(tmp_path, serve_process):
    d = str(tmp_path / "wal")
    os.makedirs(d)
    port = _free_port()
    endpoint = _serve(serve_process, d, "--metrics-port", str(port))
    with WalClient(endpoint, timeout=10) as client:
        open_consumer(d, "behind", start="latest").close()
        pos = client.append_batch(recs(30))
        end = client.current_position()
    open_consumer(d, "caught-up", start="latest").close()
    text = _scrape(port)
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("wal_")}
    behind = lines['wal_consumer_lag_bytes{consumer="behind"}']
    # 30 records across segment rolls: the bytes of every frame from the first record to the end
    assert behind >= 30 * 500 and behind < (end.segment_id - pos[0].segment_id + 1) * 8192
    assert lines['wal_consumer_lag_bytes{consumer="caught-up"}'] == 0
    assert lines['wal_consumer_expired{consumer="behind"}'] == 0
    assert 'wal_consumer_last_commit_timestamp_seconds{consumer="behind"}' not in lines
    with open_consumer(d, "behind") as c:
        for _record, position in c:
            c.commit(position)
            break
    lines = {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in _scrape(port).splitlines() if line.startswith("wal_")
    }
    assert lines['wal_consumer_lag_bytes{consumer="behind"}'] < behind
    assert lines['wal_consumer_last_commit_timestamp_seconds{consumer="behind"}'] > 0
