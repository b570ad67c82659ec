"""The embedded Wal: policies, threads sharing fsyncs, rotation, GC, the lock, readers in other processes."""

import multiprocessing as mp
import os
import struct
import threading

import pytest
from crc32c import crc32c

from nori_wal import (
    Compression,
    CorruptionError,
    FsyncPolicy,
    Position,
    Record,
    RecordsDeletedError,
    RecordTooLargeError,
    Wal,
    WalClosedError,
    WalConfig,
    WalIOError,
    WalLockedError,
    codec,
    open_reader,
)
from nori_wal.fs import OsFileLayer
from nori_wal.observe import NoopMeter, SegmentRoll
from nori_wal.segment import HEADER_SIZE


class CountingLayer(OsFileLayer):
    """The real file system, counting data fsyncs (to show threads share them)."""

    def __init__(self):
        self.fsyncs = 0
        self.writebacks = 0

    def create(self, path):
        return _Counting(super().create(path), self)

    def open_append(self, path):
        return _Counting(super().open_append(path), self)


class _Counting:
    def __init__(self, inner, layer):
        self._inner, self._layer = inner, layer

    def sync(self):
        self._layer.fsyncs += 1
        self._inner.sync()

    def start_writeback(self, offset, nbytes):
        self._layer.writebacks += 1
        self._inner.start_writeback(offset, nbytes)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.mark.parametrize("policy", ["always", "batch:2ms", "os"])
def test_append_read_back_under_each_policy(tmp_path, policy):
    recs = [Record.put(b"k%d" % i, b"v" * i) for i in range(100)] + [Record.delete(b"k1")]
    with Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.parse(policy)))[0] as wal:
        pos = [wal.append(r) for r in recs[:50]] + wal.append_batch(recs[50:])
        assert pos == sorted(pos) and len(set(pos)) == len(pos)
        got = list(wal.read_from(Position(0, 0)))
    assert [r for r, _ in got] == recs and [p for _, p in got] == pos


def test_os_starts_writeback_without_fsyncing(tmp_path):
    """Under Os the log hints the kernel to write back every WRITEBACK_BYTES; only sealing fsyncs the data."""
    from nori_wal.segment_log import WRITEBACK_BYTES

    layer = CountingLayer()
    wal, _ = Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.os()), layer=layer)
    value = b"v" * 1000
    for b in range(WRITEBACK_BYTES // 1_000_000 + 1):
        wal.append_batch([Record.put(b"%02d-%03d" % (b, i), value) for i in range(1000)])
    assert layer.writebacks == 1 and layer.fsyncs == 1  # the hint; the first segment's header
    wal.close()
    assert layer.fsyncs == 3  # sealing: the records, then the seal (never before the records it counts)


def test_threads_share_fsyncs_under_always(tmp_path):
    layer = CountingLayer()
    wal, _ = Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.always()), layer=layer)
    before = layer.fsyncs
    out = []

    def work(t):
        out.extend(wal.append(Record.put(b"t%d" % t, b"x" * 100)) for _ in range(200))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 1600
    # Every append waited for an fsync, but not each had its own: they were shared.
    assert 0 < layer.fsyncs - before <= 1600
    wal.close()
    assert sum(1 for _ in open_reader(tmp_path)) == 1600


def test_sync_fsyncs_under_os_policy(tmp_path):
    layer = CountingLayer()
    with Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.os()), layer=layer)[0] as wal:
        wal.append(Record.put(b"a", b"b"))
        n = layer.fsyncs
        wal.sync()
        assert layer.fsyncs == n + 1


class RecordingMeter(NoopMeter):
    def __init__(self):
        self.events = []

    def event(self, event):
        self.events.append(event)


def test_rotation_never_splits_a_record_and_seals_segments(tmp_path):
    meter = RecordingMeter()
    cfg = WalConfig(dir=tmp_path, max_segment_size=8192, fsync_policy=FsyncPolicy.os())
    wal, _ = Wal.open_with_meter(cfg, meter)
    recs = [Record.put(b"k%d" % i, os.urandom(700)) for i in range(100)]
    pos = wal.append_batch(recs[:50]) + [wal.append(r) for r in recs[50:]]
    segs = sorted(os.listdir(tmp_path))
    assert len([s for s in segs if s.endswith(".wal")]) > 5
    for name in segs:
        if name.endswith(".wal"):
            assert os.path.getsize(tmp_path / name) <= 8192
    rolls = [e for e in meter.events if isinstance(e, SegmentRoll)]
    assert len(rolls) == pos[-1].segment_id
    assert all(p.offset >= HEADER_SIZE for p in pos)
    assert [r for r, _ in wal.read_from(Position(0, 0))] == recs
    wal.close()


def test_record_larger_than_a_segment_is_rejected_and_nothing_is_written(tmp_path):
    with Wal.open(WalConfig(dir=tmp_path, max_segment_size=8192))[0] as wal:
        wal.append(Record.put(b"a", b"1"))
        before = wal.current_position()
        with pytest.raises(RecordTooLargeError, match="8192"):
            wal.append_batch([Record.put(b"b", b"2"), Record.put(b"big", b"x" * 9000)])
        assert wal.current_position() == before
        assert wal.append(Record.put(b"c", b"3")).offset == before.offset


@pytest.mark.parametrize(
    "comp, limit_name",
    [
        (Compression.ZSTD, "MAX_DECOMPRESSED_VALUE"),
        (Compression.LZ4, "MAX_DECOMPRESSED_VALUE"),
        (Compression.LZ4, "LZ4_MAX_INPUT"),
    ],
)
def test_a_compressed_value_readers_could_not_decompress_is_rejected_not_acked(tmp_path, monkeypatch, comp, limit_name):
    """Its frame is small, but its value is over a limit (shrunk here: the real ones are ~2 GB)."""
    monkeypatch.setattr(codec, limit_name, 4096)
    with Wal.open(WalConfig(dir=tmp_path))[0] as wal:
        wal.append(Record.put(b"a", b"1"))
        before = wal.current_position()
        with pytest.raises(RecordTooLargeError, match="4097 bytes"):
            wal.append(Record.put(b"big", bytes(4097)).with_compression(comp))
        assert wal.current_position() == before
        wal.append(Record.put(b"c", b"3"))
    assert [r.key for r, _ in open_reader(tmp_path)] == [b"a", b"c"]


def test_a_frame_with_an_overflowing_ttl_is_corruption_for_readers(tmp_path):
    """Such a frame (written before writers refused it) stops readers with CorruptionError, not OverflowError."""
    body = b"\x01\x01" + bytes((codec.FLAG_TTL,)) + codec._varint(2**63) + b"kv"
    bad = struct.pack("<I", crc32c(body)) + body
    with Wal.open(WalConfig(dir=tmp_path))[0] as wal:
        wal.append(Record.put(b"a", b"1"))
        at = wal.append_frames([bad])[0]  # the trusted path: no validation
        wal.append(Record.put(b"b", b"2"))
    reader = open_reader(tmp_path)
    assert next(iter(reader))[0].key == b"a"
    with pytest.raises(CorruptionError) as e:
        reader.next_record()
    assert (e.value.segment_id, e.value.offset) == (at.segment_id, at.offset)
    reader.close()


def test_gc_deletes_old_segments_never_the_active_one_and_an_open_reader_survives(tmp_path):
    cfg = WalConfig(dir=tmp_path, max_segment_size=8192, fsync_policy=FsyncPolicy.os())
    wal, _ = Wal.open(cfg)
    recs = [Record.put(b"k%d" % i, os.urandom(1000)) for i in range(60)]
    pos = wal.append_batch(recs)
    reader = wal.read_from(Position(0, 0), on_gap="skip")
    first = [reader.next_record() for _ in range(3)]  # holds segment 0 open
    strict = wal.read_from(Position(0, 0))
    strict.next_record()
    last_seg = pos[-1].segment_id
    deleted = wal.delete_segments_before(wal.current_position())  # (past the end would raise ValueError)
    assert deleted == last_seg  # all but the active segment
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".wal")) == ["%06d.wal" % last_seg]
    rest = [item for item in reader]
    # By default a reader overtaken by GC says so, naming the gap, after the segment it holds.
    with pytest.raises(RecordsDeletedError) as gap:
        list(strict)
    assert gap.value.gap_start.segment_id == 0 and gap.value.gap_end == Position(last_seg, 32)
    strict.close()
    # With on_gap="skip" the reader finishes the segment it holds, then moves on to what remains.
    got = [r for r, _ in first] + [r for r, _ in rest]
    seg0 = [r for r, p in zip(recs, pos) if p.segment_id == 0]
    tail = [r for r, p in zip(recs, pos) if p.segment_id == last_seg]
    assert got == seg0 + tail
    reader.close()
    # A reader starting in a deleted segment raises, or (on_gap="skip") moves to the first remaining one.
    with pytest.raises(RecordsDeletedError, match="1:500 up to"):
        open_reader(tmp_path, Position(1, 500)).next_record()
    assert [r for r, _ in open_reader(tmp_path, Position(1, 500), on_gap="skip")] == tail
    assert [r for r, _ in open_reader(tmp_path)] == tail  # Position(0, 0): the oldest record that remains
    assert wal.delete_segments_before(Position(last_seg, 0)) == 0
    wal.close()


def test_closing_a_following_reader_from_another_thread_ends_its_iteration_quietly(tmp_path):
    """close() is how another thread stops a follower: it ends at its next step, it does not raise."""
    with Wal.open(WalConfig(dir=tmp_path))[0] as wal:
        first = wal.append(Record.put(b"a", b"b"))
        reader = open_reader(tmp_path, follow=True)
        got, outcome, started = [], [], threading.Event()

        def consume():
            try:
                for _, pos in reader:
                    got.append(pos)
                    started.set()
                outcome.append("ended")
            except Exception as exc:
                outcome.append(exc)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        assert started.wait(30)
        reader.close()
        t.join(30)
        assert not t.is_alive() and outcome == ["ended"] and got == [first]
        with pytest.raises(WalClosedError):
            reader.next_record()


def test_open_reader_on_a_missing_directory_raises_a_wal_error(tmp_path):
    with pytest.raises(WalIOError) as err:
        open_reader(tmp_path / "missing")
    assert "missing" in str(err.value) and isinstance(err.value.__cause__, FileNotFoundError)


def test_second_opener_gets_locked_error_at_once_also_in_the_same_process(tmp_path):
    wal, _ = Wal.open(WalConfig(dir=tmp_path))
    with pytest.raises(WalLockedError):
        Wal.open(WalConfig(dir=tmp_path))
    wal.close()
    Wal.open(WalConfig(dir=tmp_path))[0].close()


def _try_open(d, q):
    try:
        Wal.open(WalConfig(dir=d))[0].close()
        q.put("opened")
    except WalLockedError as e:
        q.put("locked: %s" % e)


def test_second_opener_in_another_process_is_locked_out(tmp_path):
    ctx = mp.get_context("spawn")
    with Wal.open(WalConfig(dir=tmp_path))[0]:
        q = ctx.Queue()
        p = ctx.Process(target=_try_open, args=(str(tmp_path), q))
        p.start()
        assert q.get(timeout=60).startswith("locked")
        p.join(30)


def test_closed_wal_raises(tmp_path):
    wal, _ = Wal.open(WalConfig(dir=tmp_path))
    wal.close()
    wal.close()
    with pytest.raises(WalClosedError):
        wal.append(Record.put(b"a", b"b"))
    with pytest.raises(WalClosedError):
        wal.read_from(Position(0, 0))


def _append_in_child(d, n, go):
    wal, _ = Wal.open(WalConfig(dir=d, max_segment_size=16 * 1024, fsync_policy=FsyncPolicy.os()))
    go.wait()
    for i in range(n):
        wal.append_batch([Record.put(b"%06d" % (i * 7 + j), os.urandom(300)) for j in range(7)])
    wal.close()


def test_reader_process_reads_while_a_writer_process_appends(tmp_path):
    """The reader stops cleanly at half-written tails and follows the writer across segments."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    n = 300
    child = ctx.Process(target=_append_in_child, args=(str(tmp_path), n, go))
    child.start()
    try:
        reader = None
        while reader is None:
            if any(f.endswith(".wal") for f in os.listdir(tmp_path)):
                reader = open_reader(tmp_path)
        go.set()
        keys = []
        while len(keys) < n * 7:
            item = reader.next_record()
            if item is None:
                assert child.is_alive() or child.exitcode == 0
                continue
            keys.append(item[0].key)
        assert keys == [b"%06d" % i for i in range(n * 7)]
        reader.close()
    finally:
        child.join(60)
    assert child.exitcode == 0


def _append_and_die(d, n):
    wal, _ = Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.always()))
    for i in range(n):
        wal.append(Record.put(b"k%d" % i, b"v" * 100))
    os._exit(0)  # no close: like a crash of the process


def test_preallocated_zeros_speed_fsyncs_and_are_cut_by_recovery_and_seals(tmp_path):
    """Under Always the active segment keeps durable zeros ahead of its records (cheaper fdatasync);
    a crash leaves them as a zero tail that recovery cuts (not corruption), and a seal ends the file."""
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_append_and_die, args=(str(tmp_path), 50))
    child.start()
    child.join(60)
    seg = tmp_path / "000000.wal"
    assert os.path.getsize(seg) > 50 * 110  # zeros past the records
    wal, info = Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.always()))
    assert info.valid_records == 50 and info.bytes_truncated > 0 and not info.corruption_detected
    end = wal.current_position()
    assert os.path.getsize(seg) == end.offset  # recovery cut the zero tail
    wal.append(Record.put(b"after", b"crash"))
    wal.close()
    from nori_wal.fs import OS
    from nori_wal.recovery import read_seal

    h = OS.open_read(str(seg))
    try:
        assert read_seal(h, h.size()) is not None  # the seal is the file's last frame
    finally:
        h.close()
    assert [r.key for r, _ in open_reader(tmp_path)][-1] == b"after"


def _in_forked_child(body) -> int:
    """Run ``body()`` in a forked child; its exit code (0: it returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports by exit code
        code = 1
        try:
            code = 0 if body() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_cannot_append_to_its_parents_wal_and_changes_nothing_of_it(tmp_path):
    """Two processes appending at their own copies of the end would overwrite each other's records."""
    cfg = WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.always())
    wal, _ = Wal.open(cfg)
    first = wal.append(Record.put(b"a", b"parent"))

    def child() -> bool:
        with wal.read_from(Position(0, 0)) as reader:  # reading opens its own files: allowed
            if [r.key for r, _ in reader] != [b"a"]:
                return False
        try:
            wal.append(Record.put(b"b", b"child"))
            return False
        except WalClosedError as exc:
            wal.close()  # closes nothing of the parent's: no seal, no unlock
            return "fork" in str(exc)

    assert _in_forked_child(child) == 0
    second = wal.append(Record.put(b"c", b"parent"))
    assert second > first
    wal.close()
    with open_reader(tmp_path) as reader:
        assert [(r.key, p) for r, p in reader] == [(b"a", first), (b"c", second)]


def test_closing_releases_the_directory_though_a_forked_child_still_runs(tmp_path):
    cfg = WalConfig(dir=tmp_path)
    wal, _ = Wal.open(cfg)
    wal.append(Record.put(b"a", b"1"))
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a child that outlives the close
        os.close(go_write)
        os.read(go_read, 1)
        os._exit(0)
    os.close(go_read)
    try:
        wal.close()
        Wal.open(cfg)[0].close()  # the child never held the lock: no WalLockedError
    finally:
        os.close(go_write)
        os.waitpid(pid, 0)


_KILLED_WRITER = """
import os, signal, sys
from nori_wal import Wal, WalConfig, Record
wal, _ = Wal.open(WalConfig(dir=sys.argv[1]))
wal.append(Record.put(b"a", b"1"))
go = int(sys.argv[2])
if os.fork() == 0:                  # a pool worker, say: it outlives its parent
    os.read(go, 1)
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_does_not_leave_its_directory_locked_by_its_children(tmp_path):
    import subprocess
    import sys

    go_read, go_write = os.pipe()
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(go_read)], pass_fds=(go_read,), timeout=60
    )
    os.close(go_read)
    try:
        assert proc.returncode == -9
        wal, info = Wal.open(WalConfig(dir=tmp_path))  # while the orphaned child still runs
        assert info.valid_records == 1
        wal.close()
    finally:
        os.close(go_write)  # the child ends


def test_every_call_after_close_raises_even_an_empty_batch(tmp_path):
    wal, _ = Wal.open(WalConfig(dir=tmp_path))
    wal.close()
    for call in (lambda: wal.append_batch([]), lambda: wal.append(Record.put(b"k", b"v")), wal.sync):
        with pytest.raises(WalClosedError):
            call()


@pytest.mark.parametrize(
    "bad",
    [
        "x",
        None,
        Record(b"k", "v"),
        Record(5, b"v"),
        Record(b"k", b"v", False, None, 7),
        Record(b"k", b"v", False, "soon", 0),
    ],
)
def test_appending_something_that_is_not_a_valid_record_is_a_clear_wal_error_and_writes_nothing(tmp_path, bad):
    from nori_wal import InvalidRecordError, WalError

    with Wal.open(WalConfig(dir=tmp_path))[0] as wal:
        before = wal.append(Record.put(b"ok", b"1"))
        for call in (lambda: wal.append(bad), lambda: wal.append_batch([Record.put(b"ok", b"2"), bad])):
            with pytest.raises(InvalidRecordError, match="not a valid Record") as err:
                call()
            assert isinstance(err.value, WalError) and isinstance(err.value, ValueError)
        assert wal.append(Record.put(b"ok", b"3")) > before
    with open_reader(tmp_path) as reader:
        assert [bytes(r.value) for r, _ in reader] == [b"1", b"3"]


@pytest.mark.parametrize("count", [0, 3, 30])  # empty, inside a segment, past several rolls
def test_current_position_is_the_same_after_a_clean_close_and_reopen(tmp_path, count):
    cfg = WalConfig(dir=tmp_path, max_segment_size=4096)
    with Wal.open(cfg)[0] as wal:
        for i in range(count):
            wal.append(Record.put(b"k%d" % i, b"v" * 200))
        before = wal.current_position()
    with Wal.open(cfg)[0] as wal:
        assert wal.current_position() == before
        assert wal.append(Record.put(b"next", b"1")) >= before


@pytest.mark.parametrize("compression", [Compression.LZ4, Compression.ZSTD])
def test_keys_are_never_compressed(tmp_path, compression):
    key = b"k" * 200  # as compressible as a key gets
    with Wal.open(WalConfig(dir=tmp_path))[0] as wal:
        pos = wal.append(Record.put(key, b"v" * 5000).with_compression(compression))
    data = (tmp_path / "000000.wal").read_bytes()
    assert data.find(key, pos.offset) != -1  # verbatim in the frame, right after its header


def test_a_checksum_failure_before_the_end_of_the_live_segment_names_the_record(tmp_path):
    """Damage with whole records after it is corruption even in the unsealed segment a writer holds;
    damage in its last record only is "not yet" (it could be a write in progress)."""
    with Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.always()))[0] as wal:
        positions = [wal.append(Record.put(b"k%d" % i, b"v" * 50)) for i in range(10)]
        path = tmp_path / "000000.wal"
        original = path.read_bytes()
        data = bytearray(original)
        data[positions[3].offset + 10] ^= 0x01
        path.write_bytes(bytes(data))
        with open_reader(tmp_path) as reader, pytest.raises(CorruptionError) as err:
            list(reader)
        assert (err.value.segment_id, err.value.offset) == tuple(positions[3])
        assert str(positions[3].offset) in str(err.value)
        data = bytearray(original)
        data[positions[9].offset + 10] ^= 0x01
        path.write_bytes(bytes(data))
        with open_reader(tmp_path) as reader:
            assert [p for _, p in reader] == positions[:9]
        path.write_bytes(original)


class _SyncTimes(OsFileLayer):
    """The real file system, noting when each data fsync starts and how far it makes the file durable."""

    def __init__(self):
        self.syncs: list[tuple[float, str, int]] = []  # (monotonic start, path, bytes written before it)

    def open_append(self, path):
        return _Timed(super().open_append(path), self, path)

    def create(self, path):
        return _Timed(super().create(path), self, path)


class _Timed:
    def __init__(self, inner, layer, path):
        self._inner, self._layer, self._path = inner, layer, path

    def sync(self):
        import time

        self._layer.syncs.append((time.monotonic(), os.path.basename(self._path), self._inner.pos))
        self._inner.sync()

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_batch_fsyncs_at_most_once_per_window_and_every_ack_waits_for_one(tmp_path):
    """Batch(window) with four threads appending: the data fsyncs start at least a window apart, and
    every append returns only once an fsync that started after its write covered it."""
    window = 0.02
    layer = _SyncTimes()
    wal, _ = Wal.open(WalConfig(dir=tmp_path, fsync_policy=FsyncPolicy.batch(window)), layer=layer)
    returned: list[tuple[Position, int]] = []  # (position, len(frame)) as each append returned
    lock = threading.Lock()

    def producer(t: int) -> None:
        for i in range(15):
            rec = Record.put(b"t%d-%d" % (t, i), b"v" * 100)
            pos = wal.append(rec)
            with lock:
                returned.append((pos, len(codec.encode_record(rec))))
                acked_syncs = list(layer.syncs)
            end = pos.offset + len(codec.encode_record(rec))
            assert any(name.startswith("000000.wal") and upto >= end for _, name, upto in acked_syncs)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    data = [at for at, name, upto in layer.syncs if name.startswith("000000.wal") and upto > HEADER_SIZE]
    wal.close()
    assert len(returned) == 60
    gaps = [b - a for a, b in zip(data, data[1:])]
    assert len(data) >= 2 and min(gaps) >= window / 2, gaps  # (half: the clock is read just before the call)


def test_a_segment_that_cannot_be_read_is_named_in_the_error(tmp_path):
    with Wal.open(WalConfig(dir=tmp_path, max_segment_size=4096))[0] as wal:
        for i in range(30):
            wal.append(Record.put(b"k%d" % i, b"v" * 200))
    os.unlink(tmp_path / "000001.wal")
    os.mkdir(tmp_path / "000001.wal")  # a directory where segment 1 should be: reads fail
    with open_reader(tmp_path) as reader, pytest.raises(WalIOError, match="segment 1 of"):
        list(reader)
