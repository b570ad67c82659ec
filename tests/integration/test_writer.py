"""The writer process: spawn/serve/stop, the directory lock, group commit per policy, bad requests, SIGKILL.

Real writer processes, real ipc/tcp sockets, real files. Fsync order is
observed through RecordingLayer (pickled into the writer), which journals each
fsync before the writer can send the acks it allows.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import msgpack
import pytest
import zmq
from writer_support import RecordingLayer, fsync_count, keys_in, read_line, synced

from nori_wal import (
    FsyncPolicy,
    Position,
    ProtocolError,
    Record,
    RecordTooLargeError,
    Wal,
    WalConfig,
    WalIOError,
    WalLockedError,
    WriterUnavailableError,
    open_reader,
)
from nori_wal import protocol as P
from nori_wal.client import AsyncWalClient, WalClient
from nori_wal.codec import encode_record, encode_seal
from nori_wal.endpoint_file import ENDPOINT_FILE, read_endpoint_file
from nori_wal.segment import HEADER_SIZE, segment_name
from nori_wal.segment_log import WRITEBACK_BYTES
from nori_wal.writer_proc import WriterProcess


def rec(i: int, size: int = 100, tag: bytes = b"r") -> Record:
    return Record.put(b"%s%06d" % (tag, i), bytes([i % 251]) * size)


# -- lifecycle ----------------------------------------------------------------------------------


def test_spawn_serves_records_endpoint_and_stops_cleanly(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    assert w.endpoint.startswith("ipc://") and w.pid != os.getpid() and w.is_alive()
    assert w.recovery_info.valid_records == 0
    assert read_endpoint_file(wal_dir).endpoint == w.endpoint
    with WalClient.for_dir(wal_dir, timeout=10) as c:
        assert c.append(rec(0)) == Position(0, 32)
        info = c.info()
        assert info["pid"] == w.pid and info["policy"] == "always"
        # Counters since start: the append was one write, made durable by (at least) one fsync.
        assert info["records"] == 1 and info["writes"] == 1 and info["fsyncs"] >= 1
    assert w.stop() == 0
    assert not os.path.exists(os.path.join(wal_dir, ENDPOINT_FILE))
    wal, info = Wal.open(WalConfig(dir=wal_dir))
    wal.close()
    assert info.valid_records == 1 and info.bytes_truncated == 0  # stop() closed the log cleanly


def test_restart_reports_recovery(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=10) as c:
        c.append_batch([rec(i) for i in range(10)])
    w.stop()
    w2 = spawn_writer(wal_dir)
    assert w2.recovery_info.valid_records == 10


def test_spawn_raises_the_class_of_the_error_that_stopped_the_writer(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(WalIOError, match="Not a directory"):
        WriterProcess.spawn(WalConfig(dir=str(not_a_dir / "wal")))


def test_second_writer_on_a_locked_dir_fails_at_once(spawn_writer, wal_dir, serve_process):
    w = spawn_writer(wal_dir)
    with pytest.raises(WalLockedError):
        WriterProcess.spawn(WalConfig(dir=wal_dir))
    with pytest.raises(WalLockedError):
        Wal.open(WalConfig(dir=wal_dir))
    p = serve_process("--dir", wal_dir)
    assert p.wait(30) == 3
    err = p.stderr.read().strip().splitlines()
    assert len(err) == 1 and "locked" in err[0]
    with WalClient.for_dir(wal_dir, timeout=10) as c:  # the live writer was not disturbed
        assert c.append(rec(1)) == Position(0, 32)
    assert read_endpoint_file(wal_dir).pid == w.pid


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_its_endpoint_and_exits_0_on_signal(serve_process, wal_dir, sig):
    p = serve_process("--dir", wal_dir, "--fsync", "always", "--endpoint", "tcp://127.0.0.1:*")
    endpoint = read_line(p).strip()
    assert endpoint.startswith("tcp://127.0.0.1:")
    with WalClient.for_dir(wal_dir, timeout=10) as c:  # found through DIR/WRITER
        assert c.endpoint == endpoint
        positions = c.append_batch([rec(i) for i in range(20)])
    p.send_signal(sig)
    assert p.wait(30) == 0
    assert keys_in(wal_dir) == [rec(i).key for i in range(20)] and len(set(positions)) == 20


def test_spawn_on_tcp_and_a_long_directory_path(spawn_writer, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "wal"
    w = spawn_writer(str(deep))  # ipc path too long: socket in a run dir
    assert w.endpoint.startswith("ipc://") and not w.endpoint.startswith(f"ipc://{deep}")
    with WalClient.for_dir(str(deep), timeout=10) as c:
        c.append(rec(0))
    w2 = spawn_writer(str(tmp_path / "tcp"), endpoint="tcp://127.0.0.1:*")
    with WalClient(w2.endpoint, timeout=10) as c:
        c.append(rec(0))


# -- group commit and the fsync policies -----------------------------------------------------------


@pytest.mark.parametrize("overlap", [False, True], ids=["inline", "flush-thread"])
def test_acks_under_always_come_only_after_the_fsync_that_covers_them(spawn_writer, wal_dir, tmp_path, overlap):
    journal = str(tmp_path / "fsyncs")
    w = spawn_writer(wal_dir, layer=RecordingLayer(journal), overlap=overlap)
    client = WalClient(w.endpoint, timeout=10)
    late: list[tuple[Position, int]] = []
    frame_len = len(encode_record(rec(0, 200)))

    def produce(t: int) -> None:
        for i in range(60):
            pos = client.append(rec(t * 1000 + i, 200))
            done = synced(journal).get(segment_name(pos.segment_id), 0)
            if done < pos.offset + frame_len:
                late.append((pos, done))

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert not late, f"acknowledged before an fsync covered them: {late[:5]}"
    assert 0 < fsync_count(journal) <= 6 * 60 + 1


def test_batch_deadline_fires_without_new_writes(spawn_writer, wal_dir, tmp_path):
    """One append and nothing after it: the Batch timer alone must fsync it and release the ack."""
    journal = str(tmp_path / "fsyncs")
    w = spawn_writer(wal_dir, policy="batch:50ms", layer=RecordingLayer(journal))
    with WalClient(w.endpoint, timeout=10) as c:
        for i in range(3):
            pos = c.append(rec(i))
            assert synced(journal)[segment_name(pos.segment_id)] >= pos.offset + len(encode_record(rec(i)))


def test_os_acks_after_the_write_and_sync_forces_an_fsync(spawn_writer, wal_dir, tmp_path):
    journal = str(tmp_path / "fsyncs")
    w = spawn_writer(wal_dir, policy="os", layer=RecordingLayer(journal))
    created = fsync_count(journal)  # the new segment's header was fsynced
    with WalClient(w.endpoint, timeout=10) as c:
        positions = c.append_batch([rec(i) for i in range(10)])
        assert fsync_count(journal) == created
        c.sync()
        assert synced(journal)[segment_name(0)] > positions[-1].offset
        assert c.current_position() > positions[-1]


def test_os_starts_writeback_every_few_mib_without_an_fsync(spawn_writer, wal_dir, tmp_path):
    """Under Os the writer asks the kernel to write back every WRITEBACK_BYTES (a hint), and never fsyncs for it."""
    journal = str(tmp_path / "fsyncs")
    w = spawn_writer(wal_dir, policy="os", layer=RecordingLayer(journal))
    created = fsync_count(journal)
    value = b"v" * 1000
    with WalClient(w.endpoint, timeout=10) as c:
        for b in range(2 * WRITEBACK_BYTES // 1_000_000 + 3):  # ~1 MB per batch: two hints' worth
            c.append_batch([Record.put(b"%02d-%04d" % (b, i), value) for i in range(1000)])
        assert fsync_count(journal) == created  # acks under Os wait for no fsync
    with open(journal + ".writeback") as f:
        hints = [(name, int(off), int(n)) for name, off, n in (line.split() for line in f)]
    assert len(hints) == 2 and all(n >= WRITEBACK_BYTES for _, _, n in hints)
    assert hints[0][1] == HEADER_SIZE and hints[1][1] == hints[0][1] + hints[0][2]  # contiguous, in order


@pytest.mark.parametrize("overlap", [False, True], ids=["inline", "flush-thread"])
def test_sync_requests_interleave_with_background_writeback(spawn_writer, wal_dir, overlap):
    """A SYNC may queue behind a writeback in the flush thread: each is answered, nothing hangs."""
    w = spawn_writer(wal_dir, policy="os", overlap=overlap)
    client = WalClient(w.endpoint, timeout=10)
    value = b"v" * 1000
    errors: list[BaseException] = []
    last: list[Position] = []

    def appender() -> None:
        try:
            for b in range(3 * WRITEBACK_BYTES // 1_000_000):
                last[:] = client.append_batch([Record.put(b"%02d-%04d" % (b, i), value) for i in range(1000)])[-1:]
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    t = threading.Thread(target=appender)
    t.start()
    syncs = 0
    while t.is_alive():
        client.sync()
        syncs += 1
    t.join()
    client.sync()
    client.close()
    assert not errors and syncs > 0
    assert w.stop() == 0
    assert keys_in(wal_dir)[-1] == b"%02d-0999" % (3 * WRITEBACK_BYTES // 1_000_000 - 1)


def test_payloads_larger_than_a_segment_are_split_at_frame_boundaries(spawn_writer, tmp_path):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=4096, fsync_policy=FsyncPolicy.always()))
    records = [rec(i, 500) for i in range(40)]  # ~21 KB: five segments' worth
    with WalClient(w.endpoint, timeout=10) as c:
        positions = c.append_batch(records)
        assert positions == sorted(positions) and len({p.segment_id for p in positions}) >= 5
        assert c.delete_segments_before(positions[-1]) >= 4
    with open_reader(d, positions[-1]) as r:
        got = list(r)
    assert got == [(records[-1], positions[-1])]


def test_a_record_too_large_for_a_segment_fails_alone(spawn_writer, tmp_path):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=4096, fsync_policy=FsyncPolicy.always()))
    big = Record.put(b"big", b"x" * 5000)
    with WalClient(w.endpoint, timeout=10) as c:
        with pytest.raises(RecordTooLargeError, match="segment holds at most"):
            c.append(big)
        c.append(rec(0))

    async def coalesced():
        async with AsyncWalClient(w.endpoint, timeout=10) as a:
            import asyncio

            return await asyncio.gather(a.append(rec(1)), a.append(big), a.append(rec(2)), return_exceptions=True)

    import asyncio

    first, err, last = asyncio.run(coalesced())
    assert isinstance(err, RecordTooLargeError) and first < last
    assert keys_in(d) == [rec(0).key, rec(1).key, rec(2).key]


# -- hostile producers --------------------------------------------------------------------------------


def bad_messages(max_frame: int) -> list[tuple[str, list[bytes], type]]:
    good = encode_record(rec(0))
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    big = encode_record(Record.put(b"b", b"x" * (max_frame + 10)))
    return [
        ("garbage header", [b"\xc1\xc1"], ProtocolError),
        ("three frames", [P.encode_append(1, 1), good, good], ProtocolError),
        ("wrong version", [msgpack.packb([9, 1, 2, 1]), good], ProtocolError),
        ("unknown op", [msgpack.packb([1, 77, 3])], ProtocolError),
        ("append without payload", [P.encode_append(4, 1)], ProtocolError),
        ("bad crc", [P.encode_append(5, 1), bytes(bad_crc)], ProtocolError),
        ("torn frame", [P.encode_append(6, 1), good[:-3]], ProtocolError),
        ("count mismatch", [P.encode_append(7, 2), good], ProtocolError),
        ("seal frame", [P.encode_append(8, 2), good + encode_seal(1, 32)], ProtocolError),
        ("zeros", [P.encode_append(9, 1), bytes(64)], ProtocolError),
        ("frame too large", [P.encode_append(10, 1), big], RecordTooLargeError),
        ("negative delete", [msgpack.packb([1, 4, 11, -1, 0])], ProtocolError),
        ("compact header, bad crc", [msgpack.packb([1, 1, 12, 1]), bytes(bad_crc)], ProtocolError),  # general path
        ("one-frame append, bad crc", [P.encode_append(13, 1) + bytes(bad_crc)], ProtocolError),
        ("one-frame append, count mismatch", [P.encode_append(14, 3) + good], ProtocolError),
        ("one-frame append, torn", [P.encode_append(15, 1) + good[:-1]], ProtocolError),
        ("one-frame append, too large", [P.encode_append(16, 1) + big], RecordTooLargeError),
    ]


def test_bad_requests_get_errors_while_a_good_producer_keeps_going(spawn_writer, tmp_path):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always()))
    good_positions: list[Position] = []
    stop = threading.Event()

    def good_producer() -> None:
        with WalClient(w.endpoint, timeout=10) as c:
            i = 0
            while not stop.is_set() or i < 50:
                good_positions.append(c.append(rec(i, tag=b"g")))
                i += 1

    t = threading.Thread(target=good_producer)
    t.start()
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(w.endpoint)
    try:
        for name, frames, expected in bad_messages(64 * 1024) * 3:
            raw.send_multipart(frames)
            assert raw.poll(10_000), f"no reply to {name}"
            reply = P.decode_reply(raw.recv())
            assert not reply.ok and type(reply.result) is expected, (name, reply)
        raw.send_multipart([P.encode_append(99, 1), encode_record(rec(0, tag=b"raw"))])
        assert raw.poll(10_000) and P.decode_reply(raw.recv()).ok  # the writer still serves it
        raw.send_multipart([msgpack.packb([1, 1, 98, 1]), encode_record(rec(1, tag=b"raw"))])
        reply = P.decode_reply(raw.recv()) if raw.poll(10_000) else None  # any msgpack header is an APPEND
        assert reply is not None and reply.ok and reply.request_id == 98 and reply.result[2] == 1
        raw.send(P.encode_append(97, 2) + encode_record(rec(2, tag=b"raw")) + encode_record(rec(3, tag=b"raw")))
        reply = P.decode_reply(raw.recv()) if raw.poll(10_000) else None  # the one-frame form, two records
        assert reply is not None and reply.ok and reply.request_id == 97 and reply.result[2] == 2
    finally:
        stop.set()
        t.join(60)
        raw.close(0)
        ctx.term()
    keys = keys_in(d)
    assert sorted(k for k in keys if k.startswith(b"g")) == [rec(i, tag=b"g").key for i in range(len(good_positions))]
    assert len(keys) == len(good_positions) + 4 and len(set(good_positions)) == len(good_positions)


# -- crash and restart ----------------------------------------------------------------------------------


def test_sigkill_under_load_then_restart_keeps_every_acknowledged_record(spawn_writer, wal_dir):
    acked: dict[bytes, tuple[Position, Record]] = {}
    lock = threading.Lock()
    clients = [WalClient.for_dir(wal_dir, timeout=5) for _ in range(4)]
    for rnd in range(2):
        w = spawn_writer(wal_dir)
        started = threading.Barrier(len(clients) + 1)
        failures: list[BaseException] = []

        def produce(
            t: int,
            c: WalClient,
            started: threading.Barrier = started,
            rnd: int = rnd,
            failures: list[BaseException] = failures,
        ) -> None:
            started.wait(30)
            i = 0
            while True:
                r = rec(i, 50 + i % 300, tag=b"%d-%d-" % (rnd, t))
                try:
                    pos = c.append(r) if i % 3 else c.append_batch([r])[0]
                except WriterUnavailableError as exc:
                    failures.append(exc)
                    return
                with lock:
                    acked[r.key] = (pos, r)
                i += 1

        threads = [threading.Thread(target=produce, args=(t, c)) for t, c in enumerate(clients)]
        for t in threads:
            t.start()
        started.wait(30)
        with WalClient(w.endpoint, timeout=10) as probe:
            while True:  # let some records be acknowledged first
                with lock:
                    if len(acked) >= 200 * (rnd + 1):
                        break
                probe.current_position()
        w.kill()
        for t in threads:
            t.join(60)
        assert len(failures) == len(clients)
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=10) as c:  # the old clients reconnect after the restart
        assert clients[0].append(rec(0, tag=b"after")) > Position(0, 0)
    for c in clients:
        c.close()
    found = {}
    with open_reader(wal_dir) as r:
        for record, pos in r:
            found[record.key] = (pos, record)
    missing = [k for k, v in acked.items() if found.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged records lost or changed, e.g. {missing[:3]}"


def test_writer_with_no_spawner_left_stops_cleanly(wal_dir, tmp_path):
    """The lifeline: when the spawning process dies, the writer drains, fsyncs, exits 0 and frees the dir."""
    import subprocess
    import sys

    code = (
        "import sys, json; from nori_wal import WalConfig; from nori_wal.writer_proc import WriterProcess\n"
        f"w = WriterProcess.spawn(WalConfig(dir={wal_dir!r}))\n"
        "print(json.dumps([w.pid, w.endpoint]), flush=True)\n"
        "import os; os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    pid, endpoint = json.loads(out.stdout)
    with WalClient(endpoint, timeout=2) as c:
        with pytest.raises(WriterUnavailableError):
            for _ in range(10_000):  # the writer is stopping, or gone
                c.append(rec(0))
    wal = None
    for _ in range(200):  # bounded: the writer frees the lock within seconds
        try:
            wal, _info = Wal.open(WalConfig(dir=wal_dir))
            break
        except WalLockedError:
            threading.Event().wait(0.05)
    assert wal is not None, f"writer {pid} still holds {wal_dir}"
    wal.close()


_SIGNAL_DURING_RECOVERY = """
import os, signal, sys
from nori_wal import WalConfig
from nori_wal.fs import OsFileLayer
from nori_wal.writer_proc.server import WriterSpec, run_writer

class SignalDuringRecovery(OsFileLayer):
    def listdir(self, path):            # recovery lists the directory first: the signal lands mid-open
        os.kill(os.getpid(), getattr(signal, sys.argv[2]))
        return super().listdir(path)

spec = WriterSpec(WalConfig(dir=sys.argv[1]), layer=SignalDuringRecovery())
sys.exit(run_writer(spec, lambda server: print("ready", flush=True)))
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_writer_is_still_opening_its_log_stops_it_cleanly(tmp_path, sig):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_DURING_RECOVERY, str(tmp_path / "wal"), sig],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    wal, info = Wal.open(WalConfig(dir=tmp_path / "wal"))
    wal.close()
    assert info.bytes_truncated == 0  # closed cleanly: sealed, nothing to cut
