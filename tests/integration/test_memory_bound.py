"""The writer's memory is bounded in bytes: a flood of the largest requests over many connections
(raw DEALER sockets: an attacker does not use our client) cannot take it past 512 MiB, nothing is
dropped, and another producer's small append is still acknowledged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgpack
import zmq

from nori_wal import Record
from nori_wal import protocol as P
from nori_wal.client import WalClient
from nori_wal.codec import encode_record
from nori_wal.writer_proc.budget import MemoryBudget

MIB = 1024 * 1024
FLOODERS = 8
REQUESTS_EACH = 12  # 12 x 16 MiB: the 3 x 60 MiB appends per connection, as the writer takes them
RSS_LIMIT_MIB = 512


def _largest_frame() -> bytes:
    """One record frame as large as one request may carry."""
    return encode_record(Record.put(b"k", b"\xab" * (P.MAX_PAYLOAD_BYTES - 64)))


def _status_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kb / 1024


def test_the_budget_fits_the_flood_it_is_tested_with():
    b = MemoryBudget()
    assert b.connection_bound <= b.max_connection_bytes
    assert b.worst_case(FLOODERS) + 64 * MIB < RSS_LIMIT_MIB * MIB  # + the interpreter and the log


def test_a_flood_of_the_largest_requests_stays_under_512_mib_and_a_small_append_gets_through(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir, policy="batch:5ms")
    frame = _largest_frame()
    assert len(frame) <= P.MAX_PAYLOAD_BYTES
    ctx = zmq.Context()
    socks: list[zmq.Socket] = []
    try:
        for _ in range(FLOODERS):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)  # the sender queues everything: only the writer's side may push back
            s.connect(w.endpoint)
            socks.append(s)
        for rid in range(1, REQUESTS_EACH + 1):
            for s in socks:
                s.send_multipart([P.encode_append(rid, 1), frame], copy=False)  # one buffer, shared
        with WalClient(w.endpoint, timeout=120.0) as small:
            started = time.monotonic()
            pos = small.append(
                Record.put(b"small", b"append")
            )  # fair queueing: it waits behind at most a group per connection
            waited = time.monotonic() - started
        assert pos is not None
        replies = 0
        deadline = time.monotonic() + 300
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        while replies < FLOODERS * REQUESTS_EACH:
            assert time.monotonic() < deadline, f"only {replies} of the flood's requests were acknowledged"
            for s, _ in poller.poll(1000):
                reply = msgpack.unpackb(s.recv())
                assert reply[2] == P.OK, reply  # back-pressure, never a refusal or a drop
                replies += 1
        peak = _status_mib(w.pid, "VmHWM")
        info = WalClient(w.endpoint, timeout=30.0)
        try:
            assert info.info()["records"] == FLOODERS * REQUESTS_EACH + 1
        finally:
            info.close()
    finally:
        for s in socks:
            s.close()
        ctx.term()
    print(f"writer peak RSS {peak:.0f} MiB; the small append waited {waited:.2f} s")
    assert peak < RSS_LIMIT_MIB, f"the writer's peak RSS was {peak:.0f} MiB"
    assert w.stop() == 0


def test_serve_refuses_a_connection_cap_below_two_requests_and_touches_nothing(tmp_path):
    d = tmp_path / "wal"
    proc = subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "serve", "--dir", str(d), "--max-connection-bytes", "1000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "max_connection_bytes must be at least" in proc.stderr
    assert not os.path.exists(d)
