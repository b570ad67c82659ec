"""A segment lost from the middle of the log is corruption; GC's prefix and recovery's skipped ids are not.

Each segment's header names the segment it follows (docs/FORMAT.md), and GC
deletes oldest first with the directory fsynced after each unlink, so recovery,
readers and ``verify`` tell a lost segment from a deleted one.
"""

from __future__ import annotations

import errno
import os
import struct

import pytest
from crc32c import crc32c
from writer_support import run_cli

from nori_wal import CorruptionError, FsyncPolicy, Position, Record, Wal, WalConfig, WalIOError, open_reader
from nori_wal.inspect_log import inspect_log
from nori_wal.segment import HEADER_SIZE, segment_name
from nori_wal.testing import FaultFS

SEG = 8192


def config(d, policy=None):
    return WalConfig(dir=d, max_segment_size=SEG, fsync_policy=policy or FsyncPolicy.os())


def make_log(d, n=60):
    """A closed log of ``n`` 1000-byte records over several segments; returns (records, positions)."""
    recs = [Record.put(b"k%03d" % i, os.urandom(1000)) for i in range(n)]
    with Wal.open(config(d))[0] as wal:
        pos = wal.append_batch(recs)
    assert pos[-1].segment_id >= 5
    return recs, pos


def listing(d):
    return {name: os.path.getsize(os.path.join(d, name)) for name in os.listdir(d)}


def read_all(d, start=Position(0, 0)):
    with open_reader(d, start) as r:
        return [rec for rec, _ in r]


def verify(d):
    return run_cli("verify", str(d))


def test_a_lost_middle_segment_stops_recovery_readers_and_verify(tmp_path):
    recs, pos = make_log(tmp_path)
    os.unlink(tmp_path / segment_name(2))
    before = listing(tmp_path)
    with pytest.raises(CorruptionError) as err:
        Wal.open(config(tmp_path))
    assert (err.value.segment_id, err.value.offset) == (3, 0)
    assert "segment 2 is missing" in str(err.value) and "refusing to open" in str(err.value)
    assert listing(tmp_path) == before  # recovery changed nothing

    # A reader reads up to the hole, then refuses to skip it; so does one starting in it.
    with open_reader(tmp_path) as r:
        got = []
        with pytest.raises(CorruptionError, match="segment 2 is missing") as rerr:
            for rec, _ in r:
                got.append(rec)
    assert got == [rec for rec, p in zip(recs, pos) if p.segment_id < 2]
    assert rerr.value.segment_id == 3
    with pytest.raises(CorruptionError, match="segment 2 is missing"):
        read_all(tmp_path, Position(2, HEADER_SIZE))

    proc = verify(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "corrupt: segment 3 offset 0: segment 2 is missing" in proc.stdout


def test_a_gc_prefix_is_no_loss(tmp_path):
    recs, pos = make_log(tmp_path)
    with Wal.open(config(tmp_path))[0] as wal:
        assert wal.delete_segments_before(Position(3, 0)) == 3
    with Wal.open(config(tmp_path))[0] as wal:
        assert wal.append(Record.put(b"after", b"gc")).segment_id > pos[-1].segment_id
    kept = [rec for rec, p in zip(recs, pos) if p.segment_id >= 3]
    assert read_all(tmp_path)[:-1] == kept
    report = inspect_log(tmp_path)
    assert report.problems == []


def test_ids_skipped_by_recovery_are_no_loss(tmp_path):
    """Recovery removes a last segment whose header is damaged; the next segment takes a new id."""
    recs, pos = make_log(tmp_path)
    last = pos[-1].segment_id
    with open(tmp_path / segment_name(last), "r+b") as f:
        f.seek(3)
        f.write(b"\xff")
    with Wal.open(config(tmp_path))[0] as wal:
        new = wal.append(Record.put(b"new", b"segment"))
    assert new.segment_id == last + 1  # id `last` is skipped, never reused
    with Wal.open(config(tmp_path))[0] as wal:  # and reopening accepts the skip
        assert wal.current_position().segment_id == last + 1
    survivors = [rec for rec, p in zip(recs, pos) if p.segment_id < last]
    assert read_all(tmp_path) == survivors + [Record.put(b"new", b"segment")]
    problems = inspect_log(tmp_path).problems  # not even the old "may be lost" warning:
    assert [(p.segment_id, p.fatal) for p in problems] == [(last, False)]  # only the set-aside file's
    assert f"set aside in {last:06d}.wal.0.broken" in problems[0].message


def test_a_segment_that_does_not_belong_between_two_others_is_refused(tmp_path):
    recs, pos = make_log(tmp_path)
    last = pos[-1].segment_id
    with open(tmp_path / segment_name(last), "r+b") as f:  # recovery will skip id `last`
        f.seek(3)
        f.write(b"\xff")
    Wal.open(config(tmp_path))[0].close()
    stray = (tmp_path / segment_name(last - 1)).read_bytes()  # a valid segment put back under the skipped id
    body = bytearray(stray[: HEADER_SIZE - 4])
    struct.pack_into("<QI", body, 16, last, 1)
    (tmp_path / segment_name(last)).write_bytes(
        bytes(body) + struct.pack("<I", crc32c(bytes(body))) + stray[HEADER_SIZE:]
    )
    with pytest.raises(CorruptionError, match=f"segment {last} does not belong"):
        Wal.open(config(tmp_path))
    assert verify(tmp_path).returncode == 1


def test_segments_written_before_headers_named_a_predecessor_are_not_judged(tmp_path):
    """An older version wrote 0 in the field: a hole then opens as it always did, and verify warns."""
    recs, pos = make_log(tmp_path)
    for sid in range(pos[-1].segment_id + 1):
        path = tmp_path / segment_name(sid)
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, 24, 0)
        struct.pack_into("<I", data, 28, crc32c(bytes(data[:28])))
        path.write_bytes(bytes(data))
    os.unlink(tmp_path / segment_name(2))
    Wal.open(config(tmp_path))[0].close()
    proc = verify(tmp_path)
    assert proc.returncode == 0 and "warning: segment 3 offset 0: segments 2..2 are missing" in proc.stdout


def test_gc_makes_each_unlink_durable_before_the_next_oldest_first():
    fs = FaultFS()
    cfg = config("/wal", FsyncPolicy.always())
    wal, _ = Wal.open(cfg, layer=fs)
    pos = wal.append_batch([Record.put(b"k%03d" % i, b"v" * 1000) for i in range(60)])
    trace = fs.start_trace()
    assert wal.delete_segments_before(Position(4, 0)) == 4
    ops = [(c.op, os.path.basename(c.path)) for c in trace if c.op in ("unlink", "sync_dir")]
    assert ops == [op for sid in range(4) for op in (("unlink", segment_name(sid)), ("sync_dir", "wal"))]
    wal.close()
    assert pos[-1].segment_id > 4


def test_a_failed_directory_fsync_in_gc_is_fail_stop_and_loses_nothing():
    fs = FaultFS()
    cfg = config("/wal", FsyncPolicy.always())
    wal, _ = Wal.open(cfg, layer=fs)
    recs = [Record.put(b"k%03d" % i, b"v" * 1000) for i in range(60)]
    wal.append_batch(recs)
    fs.inject("sync_dir", errno.EIO)
    with pytest.raises(WalIOError, match="after deleting segment 0") as err:
        wal.delete_segments_before(Position(4, 0))
    with pytest.raises(WalIOError) as again:
        wal.append(Record.put(b"late", b"x"))
    assert again.value is err.value  # fail-stop: the same error from now on
    wal.close()
    reopened, info = Wal.open(cfg, layer=fs.crash())  # the unlink did not persist: all 60 records remain
    with reopened, reopened.read_from(Position(0, 0)) as r:
        assert [rec for rec, _ in r] == recs
