"""Push wake-ups: the writer's PUB socket (DIR/WRITER ``notify``) and the followers' ``SubWaiter``.

Real writer processes and real ZeroMQ sockets. No timing asserts: a wait that a
message must end has a 30 s slice, so only the message (counted in
``wakeups``) ends it before the test's deadline.
"""

from __future__ import annotations

import os
import threading
import time

import zmq

from nori_wal import Record, open_consumer
from nori_wal.client import WalClient
from nori_wal.endpoint_file import notify_endpoint_for, read_endpoint_file
from nori_wal.fs import OS
from nori_wal.position import Position
from nori_wal.waiters import PollWaiter, SubWaiter, follow_waiter
from nori_wal.writer_proc.notify import WAKEUP, open_notifier

DEADLINE = 30.0


def _until(cond, what):
    deadline = time.monotonic() + DEADLINE
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _keep_appending(client, stop):
    """Append until ``stop`` is set (the first wake-ups may go out before the SUB has joined)."""
    i = 0
    while not stop.is_set():
        client.append(Record.put(b"k%d" % i, b"v"))
        i += 1
        stop.wait(0.005)


def test_writer_records_its_wakeup_socket_and_removes_it(wal_dir, spawn_writer):
    w = spawn_writer(wal_dir)
    rec = read_endpoint_file(wal_dir)
    assert rec is not None and rec.notify == notify_endpoint_for(w.endpoint)
    path = rec.notify[len("ipc://") :]
    assert os.path.exists(path)
    w.stop()
    assert not os.path.exists(path)


def test_a_wakeup_message_ends_a_wait(wal_dir, spawn_writer):
    w = spawn_writer(wal_dir)
    waiter = SubWaiter(OS, wal_dir, slice_=DEADLINE)
    stop = threading.Event()
    try:
        waiter.wait(0.001)  # the first look: connects to the writer's socket, learns the mark
        assert waiter.endpoint == read_endpoint_file(wal_dir).notify
        with WalClient(w.endpoint, timeout=10) as client:
            t = threading.Thread(target=_keep_appending, args=(client, stop), daemon=True)
            t.start()
            waiter.wait(2 * DEADLINE)  # only a wake-up message (or the 30 s slice) ends it
            stop.set()
            t.join(DEADLINE)
        assert waiter.wakeups >= 1
    finally:
        stop.set()
        waiter.close()


def test_close_from_another_thread_ends_a_wait(wal_dir, spawn_writer):
    spawn_writer(wal_dir)
    waiter = SubWaiter(OS, wal_dir, slice_=DEADLINE)
    waiter.wait(0.001)
    done = threading.Event()

    def run():
        waiter.wait(3 * DEADLINE)
        done.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    waiter.close()
    assert done.wait(DEADLINE)
    t.join(DEADLINE)


def test_consumer_follows_across_a_writer_restart_on_tcp(wal_dir, spawn_writer):
    w = spawn_writer(wal_dir, endpoint="tcp://127.0.0.1:*")
    rec = read_endpoint_file(wal_dir)
    assert rec is not None and rec.notify is not None and rec.notify.startswith("tcp://127.0.0.1:")
    got: list[bytes] = []
    with open_consumer(wal_dir, "follower") as consumer:
        assert isinstance(consumer._waiter, SubWaiter)

        def run():
            for record, _ in consumer:
                got.append(bytes(record.key))

        t = threading.Thread(target=run, daemon=True)
        t.start()
        with WalClient(w.endpoint, timeout=10) as client:
            client.append_batch([Record.put(b"a%d" % i, b"x") for i in range(5)])
        _until(lambda: len(got) == 5, "the first writer's records")
        w.stop()
        w2 = spawn_writer(wal_dir, endpoint="tcp://127.0.0.1:*")  # another port, another wake-up socket
        with WalClient(w2.endpoint, timeout=10) as client:
            client.append_batch([Record.put(b"b%d" % i, b"x") for i in range(5)])
        _until(lambda: len(got) == 10, "the second writer's records")
        _until(lambda: consumer._waiter.endpoint == read_endpoint_file(wal_dir).notify, "the new socket")
        consumer.close()
        t.join(DEADLINE)
    assert got == [b"a%d" % i for i in range(5)] + [b"b%d" % i for i in range(5)]


def test_notifier_publishes_once_per_move(tmp_path):
    ctx = zmq.Context()
    try:
        notifier = open_notifier(ctx, f"ipc://{tmp_path}/w.sock")
        assert notifier.endpoint == f"ipc://{tmp_path}/w.sock.pub"
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(notifier.endpoint)
        got: list[bytes] = []
        deadline = time.monotonic() + DEADLINE
        seg = 0
        while not got:  # until the subscription has joined (earlier messages are dropped: a hint)
            assert time.monotonic() < deadline
            seg += 1
            notifier.moved(Position(seg, 32))
            if sub.poll(10):
                got.append(sub.recv())
        sent = notifier.sent
        notifier.moved(Position(seg, 32))  # the same position again: nothing sent
        assert notifier.sent == sent
        assert WAKEUP.unpack(got[0])[1] == 32
        sub.close(0)
        notifier.close()
        assert not os.path.exists(f"{tmp_path}/w.sock.pub")
    finally:
        ctx.destroy(0)


def test_tests_layers_poll(tmp_path):
    from nori_wal.testing import FaultFS

    assert isinstance(follow_waiter(str(tmp_path), FaultFS()), PollWaiter)
    w = follow_waiter(str(tmp_path))
    assert isinstance(w, SubWaiter)
    w.close()


def test_a_following_reader_waits_on_the_writers_socket(wal_dir, spawn_writer):
    from nori_wal import open_reader

    w = spawn_writer(wal_dir)
    got: list[bytes] = []
    reader = open_reader(wal_dir, follow=True, durable_only=True)

    def run():
        for record, _ in reader:
            got.append(bytes(record.key))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    with WalClient(w.endpoint, timeout=10) as client:
        client.append_batch([Record.put(b"r%d" % i, b"x") for i in range(3)])
    _until(lambda: len(got) == 3, "the records")
    assert isinstance(reader._waiter, SubWaiter)
    assert reader._waiter.endpoint == read_endpoint_file(wal_dir).notify
    reader.close()  # from another thread: ends the iteration
    t.join(DEADLINE)
    assert not t.is_alive()
