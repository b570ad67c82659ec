"""The writer against peers that misbehave or collide: routing ids, unread replies, a queue at shutdown,
an ipc path or a DIR/WRITER record that belongs to someone else."""

from __future__ import annotations

import os
import socket
import threading

import msgpack
import pytest
import zmq

from nori_wal import FsyncPolicy, Record, WalConfig, WalError, WriterUnavailableError, open_reader
from nori_wal import protocol as P
from nori_wal.client import WalClient
from nori_wal.codec import encode_record
from nori_wal.endpoint_file import read_endpoint_file
from nori_wal.writer_proc import WriterProcess
from nori_wal.writer_proc.endpoint import EndpointBusy, claim_ipc
from nori_wal.writer_proc.loop import MAX_GROUP_MESSAGES
from nori_wal.writer_proc.server import WriterSpec, open_writer

FRAME = encode_record(Record.put(b"k", b"v" * 20))


def dealer(ctx: zmq.Context, endpoint: str, routing_id: bytes | None = None) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    if routing_id is not None:
        s.setsockopt(zmq.ROUTING_ID, routing_id)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.connect(endpoint)
    return s


def ask(s: zmq.Socket, msg: bytes, timeout_ms: int = 10_000) -> list:
    s.send(msg)
    assert s.poll(timeout_ms), "no reply"
    return msgpack.unpackb(s.recv())


def test_a_peer_whose_routing_id_starts_with_bang_is_served(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    ctx = zmq.Context()
    try:
        s = dealer(ctx, w.endpoint, b"!my-id")
        reply = ask(s, P.encode_append(7, 1) + FRAME)
        assert reply[1:3] == [7, P.OK]
        s.close()
    finally:
        ctx.term()
    assert w.stop() == 0


def test_peers_claiming_the_writers_internal_ids_cannot_stop_it_from_stopping(wal_dir):
    """Its own threads' sockets are connected before the public endpoint exists, so they keep their ids."""
    ctx = zmq.Context()
    endpoint = f"ipc://{os.path.dirname(wal_dir)}/w.sock"
    thieves = []
    for rid in (b"!wake", b"!flush"):
        for _ in range(5):  # connecting (and retrying every ms) before the writer binds
            t = ctx.socket(zmq.DEALER)
            t.setsockopt(zmq.ROUTING_ID, rid)
            t.setsockopt(zmq.RECONNECT_IVL, 1)
            t.setsockopt(zmq.LINGER, 0)
            t.connect(endpoint)
            thieves.append(t)
    try:
        w = WriterProcess.spawn(WalConfig(dir=wal_dir, fsync_policy=FsyncPolicy.always()), endpoint, overlap=True)
        with WalClient(w.endpoint, timeout=20) as c:
            assert c.append(Record.put(b"a", b"b")).segment_id == 0  # overlap: the flush thread answers
        assert w.stop(timeout=20) == 0  # the watcher wakes the loop
    finally:
        for t in thieves:
            t.close()
        ctx.term()


def test_a_graceful_stop_takes_every_queued_request_not_one_group(tmp_path):
    """More requests than one group takes are queued when the stop comes: all are written and answered."""
    cfg = WalConfig(dir=str(tmp_path / "wal"), fsync_policy=FsyncPolicy.always())
    server = open_writer(WriterSpec(config=cfg, endpoint="inproc://hardening-drain"))
    s = dealer(server.ctx, "inproc://hardening-drain")  # inproc: a sent message is in the writer's queue
    n = MAX_GROUP_MESSAGES * 2 + 10
    for i in range(n):
        s.send(P.encode_append(i + 1, 1) + FRAME)
    server.stop("test")
    codes: list[int] = []
    loop = threading.Thread(target=lambda: codes.append(server.serve()))
    loop.start()
    replies = []
    try:  # the writer terminates the shared context once its replies are out
        while len(replies) < n and s.poll(20_000):
            replies.append(msgpack.unpackb(s.recv()))
    except zmq.ContextTerminated:
        pass
    s.close()
    loop.join(30)
    assert codes == [0]
    assert all(r[2] == P.OK for r in replies)
    with open_reader(cfg.dir) as r:
        assert sum(1 for _ in r) == n  # one pass would have taken MAX_GROUP_MESSAGES of them


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def test_a_peer_that_never_reads_its_replies_cannot_grow_the_writer_without_bound(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir, policy="os")
    ctx = zmq.Context()
    try:
        greedy = dealer(ctx, w.endpoint)
        greedy.setsockopt(zmq.RCVHWM, 1)  # reads nothing, and asks its side to hold little
        other = dealer(ctx, w.endpoint)
        before = _rss_mib(w.pid)
        n = 600_000  # about 130 MiB of queued acks without a limit
        msg = P.encode_append(1, 1) + FRAME
        for _ in range(n):
            greedy.send(msg)
        rid = 1
        while True:  # until the writer has taken every one of them
            rid += 1
            info = ask(other, P.encode_request(P.Op.INFO, rid), 60_000)
            assert info[1:3] == [rid, P.OK]
            if info[3]["records"] >= n:
                break
        grown = _rss_mib(w.pid) - before
        assert grown < 80, f"the writer grew by {grown:.0f} MiB for one peer that reads nothing"
    finally:
        ctx.destroy(linger=0)  # (a failure above must not hang here on the unsent messages)
    assert w.stop() == 0


def test_a_second_writer_cannot_take_over_a_live_writers_ipc_endpoint(spawn_writer, tmp_path):
    first = spawn_writer(str(tmp_path / "a"))
    with pytest.raises(WalError, match="claimed by another writer"):
        WriterProcess.spawn(WalConfig(dir=str(tmp_path / "b")), first.endpoint, timeout=30)
    with WalClient.for_dir(str(tmp_path / "a"), timeout=20) as c:
        c.append(Record.put(b"still", b"mine"))
        assert c.info()["dir"] == os.path.realpath(tmp_path / "a")


def test_an_ipc_path_is_claimed_before_it_is_bound(tmp_path):
    """Two writers starting at once: the second's check ran while the first had not bound yet. ZeroMQ's
    bind replaces the socket file, so both would serve and one's clients be acknowledged into the
    other's log; the claim (an flock held from before the check to the end) refuses the second."""
    endpoint = f"ipc://{tmp_path}/shared.sock"
    first = claim_ipc(endpoint)  # claimed, nothing bound yet: the racy window
    assert first is not None
    try:
        with pytest.raises(EndpointBusy, match="claimed by another writer"):
            claim_ipc(endpoint)
    finally:
        first.release()
    claim_ipc(endpoint).release()  # free again once released


def test_wildcard_and_abstract_ipc_endpoints_need_no_claim(spawn_writer, tmp_path, monkeypatch):
    """``ipc://*`` binds a fresh path each time and ``ipc://@name`` has no file: nothing to claim, and no
    lock file may appear in the working directory."""
    monkeypatch.chdir(tmp_path)
    assert claim_ipc("ipc://*") is None and claim_ipc("ipc://@nori-test") is None
    first = spawn_writer(str(tmp_path / "a"), endpoint="ipc://*")
    second = spawn_writer(str(tmp_path / "b"), endpoint="ipc://*")
    assert first.endpoint != second.endpoint
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".lock")]


def test_thousands_of_control_requests_in_flight_all_get_their_replies(spawn_writer, wal_dir):
    """Control requests are not bound by the client's in-flight limit: one pass may answer thousands of
    them to one live peer, and none of those replies may be dropped as if the peer had gone."""
    import asyncio

    from nori_wal.client import AsyncWalClient

    w = spawn_writer(wal_dir)

    async def many() -> list:
        c = AsyncWalClient(w.endpoint, timeout=30)
        try:
            await c.current_position()
            return await asyncio.gather(*(c.current_position() for _ in range(20000)), return_exceptions=True)
        finally:
            await c.close()

    results = asyncio.run(many())
    assert not [r for r in results if isinstance(r, BaseException)]


def test_an_ipc_endpoint_that_is_not_a_socket_is_refused_not_replaced(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    with pytest.raises(WalError, match="not a socket"):
        WriterProcess.spawn(WalConfig(dir=str(tmp_path / "a")), f"ipc://{notes}", timeout=30)
    assert notes.read_text() == "keep me"


def test_a_stopping_writer_removes_only_its_own_socket_file(spawn_writer, tmp_path):
    w = spawn_writer(str(tmp_path / "a"))
    path = w.endpoint[len("ipc://") :]
    os.unlink(path)  # someone else's socket now lives at the path
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(path)
        assert w.stop() == 0
        assert os.path.exists(path)


def test_a_stale_writer_record_is_not_followed_to_another_directorys_writer(spawn_writer, tmp_path):
    """DIR/WRITER left by a killed writer names a tcp port that another directory's writer now holds."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    a = spawn_writer(str(tmp_path / "a"), endpoint=endpoint)
    a.kill()
    assert read_endpoint_file(str(tmp_path / "a")).endpoint == endpoint  # left behind
    spawn_writer(str(tmp_path / "b"), endpoint=endpoint)
    with WalClient.for_dir(str(tmp_path / "a"), timeout=1) as c, pytest.raises(WriterUnavailableError):
        c.append(Record.put(b"meant", b"for a"))
    with open_reader(str(tmp_path / "b")) as r:
        assert list(r) == []
