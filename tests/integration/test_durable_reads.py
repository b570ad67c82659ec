"""Readers of durable records only: they never see a record a power loss could still take.

The writer (embedded Wal or writer process) publishes its durable position in
DIR/DURABLE after every fsync that moves it (nori_wal/durable_mark.py); a
reader with ``durable_only=True`` reads no further.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest
from writer_support import keys_in, run_cli

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig, WalIOError, open_reader
from nori_wal.client import WalClient
from nori_wal.durable_mark import MARK_FILE, MarkReader, decode_mark, encode_mark
from nori_wal.fs import OS
from nori_wal.testing.faultyos import FaultyOsLayer
from nori_wal.writer_proc import WriterProcess

SEG = 16 * 1024


def recs(n, tag=b"r"):
    return [Record.put(b"%s%04d" % (tag, i), b"v" * 500) for i in range(n)]


def durable_keys(d, **kw):
    with open_reader(d, durable_only=True, **kw) as r:
        return [rec.key for rec, _ in r]


def test_the_mark_round_trips_and_a_torn_copy_is_no_mark():
    data = encode_mark(Position(7, 4096))
    assert decode_mark(data) == Position(7, 4096)
    for i in range(len(data) - 4):  # any byte changed (the last 4 are padding)
        torn = bytearray(data)
        torn[i] ^= 0x40
        assert decode_mark(bytes(torn)) is None
    assert decode_mark(data[:20]) is None and decode_mark(bytes(32)) is None


def test_os_policy_records_are_read_once_synced(tmp_path):
    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG, fsync_policy=FsyncPolicy.os())
    with Wal.open(cfg)[0] as wal:
        written = recs(10)
        wal.append_batch(written)  # acknowledged after the write: not durable yet
        assert len(keys_in(tmp_path)) == 10
        assert durable_keys(tmp_path) == []
        with wal.read_from(Position(0, 0), durable_only=True) as r:
            assert r.next_record() is None
        wal.sync()
        assert durable_keys(tmp_path) == [r.key for r in written]


def test_os_policy_sealed_segments_are_durable_the_active_one_is_not(tmp_path):
    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG, fsync_policy=FsyncPolicy.os())
    with Wal.open(cfg)[0] as wal:
        written = recs(100)
        pos = wal.append_batch(written)
        last = pos[-1].segment_id
        assert last >= 2
        sealed = [r.key for r, p in zip(written, pos) if p.segment_id < last]
        assert durable_keys(tmp_path) == sealed  # a roll seals (fsyncs) the segment it leaves
    assert durable_keys(tmp_path) == [r.key for r in written]  # a clean close fsyncs the rest


def test_always_policy_every_acknowledged_record_is_readable_at_once(tmp_path):
    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG, fsync_policy=FsyncPolicy.always())
    with Wal.open(cfg)[0] as wal:
        for i, rec in enumerate(recs(60)):
            wal.append(rec)
            if i % 15 == 14:  # across segment rolls too
                assert len(durable_keys(tmp_path)) == i + 1


def test_a_follower_crosses_rolls_as_the_mark_moves(tmp_path):
    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG, fsync_policy=FsyncPolicy.always())
    wal, _ = Wal.open(cfg)
    got: list[bytes] = []
    reader = open_reader(tmp_path, durable_only=True, follow=True)

    def follow():
        for rec, _ in reader:
            got.append(rec.key)
            if len(got) == 80:
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    written = recs(80)
    pos = wal.append_batch(written[:40]) + [wal.append(r) for r in written[40:]]
    t.join(timeout=30)
    assert not t.is_alive()
    assert got == [r.key for r in written] and pos[-1].segment_id >= 2
    reader.close()
    wal.close()


def test_without_a_mark_nothing_is_known_durable(tmp_path):
    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG)
    with Wal.open(cfg)[0] as wal:
        wal.append_batch(recs(5))
    os.unlink(tmp_path / MARK_FILE)  # e.g. a log an older nori-wal wrote
    assert durable_keys(tmp_path) == [] and len(keys_in(tmp_path)) == 5
    assert MarkReader(OS, str(tmp_path)).read() is None
    Wal.open(cfg)[0].close()  # the next writer publishes what recovery made durable
    assert len(durable_keys(tmp_path)) == 5


@pytest.mark.timeout(60)
def test_a_writer_process_publishes_its_fsyncs(tmp_path):
    """Os: acknowledged records stay invisible to durable readers until a sync; Always: visible when acked."""
    cfg = WalConfig(dir=tmp_path / "os", max_segment_size=SEG, fsync_policy=FsyncPolicy.os())
    with WriterProcess.spawn(cfg) as writer, WalClient(writer.endpoint, timeout=10) as c:
        written = recs(20)
        c.append_batch(written)
        assert durable_keys(cfg.dir) == []
        c.sync()
        assert durable_keys(cfg.dir) == [r.key for r in written]
    cfg = WalConfig(dir=tmp_path / "always", max_segment_size=SEG, fsync_policy=FsyncPolicy.always())
    with WriterProcess.spawn(cfg) as writer, WalClient(writer.endpoint, timeout=10) as c:
        for i, rec in enumerate(recs(40)):
            c.append(rec)
            if i % 10 == 9:
                assert len(durable_keys(cfg.dir)) == i + 1


def test_a_failed_fsync_never_moves_the_mark(tmp_path):
    """The record whose fsync failed is in the page cache (a plain reader sees it); a durable reader does not."""
    layer = FaultyOsLayer()
    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG, fsync_policy=FsyncPolicy.os())
    wal, _ = Wal.open(cfg, layer=layer)
    wal.append_batch(recs(3))
    wal.sync()
    wal.append(Record.put(b"unlucky", b"x"))  # Os: acknowledged at the write
    layer.inject("sync", errno.EIO)
    with pytest.raises(WalIOError):
        wal.sync()
    assert keys_in(tmp_path)[-1] == b"unlucky"  # (under Os the log keeps it: it was acknowledged)
    assert durable_keys(tmp_path) == [r.key for r in recs(3)]
    wal.close()


def test_dump_durable_shows_only_fsynced_records(tmp_path):
    def dump(*args):
        proc = run_cli("dump", str(tmp_path), *args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.splitlines()

    cfg = WalConfig(dir=tmp_path, max_segment_size=SEG, fsync_policy=FsyncPolicy.os())
    with Wal.open(cfg)[0] as wal:
        wal.append_batch(recs(4))
        assert len(dump()) == 4 and dump("--durable") == []
        wal.sync()
        assert dump("--durable") == dump()
