"""SegmentLog: the writer's one-write path for a group that fits the active segment; a new log directory."""

import errno
import os

import pytest

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig, WalIOError, open_reader
from nori_wal.codec import encode_record
from nori_wal.fs import OsFileLayer
from nori_wal.segment import HEADER_SIZE
from nori_wal.segment_log import SegmentLog
from nori_wal.testing import CRASH, POWER_LOSS, FaultFS, SimulatedCrash


def _frames(tag: str, count: int, size: int) -> list[bytes]:
    return [encode_record(Record.put(f"{tag}{i}".encode(), bytes([i % 251]) * size)) for i in range(count)]


def test_append_in_place_writes_a_group_in_one_run_or_nothing_when_a_roll_is_due(tmp_path):
    config = WalConfig(dir=tmp_path, max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always())
    log, _ = SegmentLog.open(config)
    first = _frames("a", 3, 100)
    start = log.append_in_place(first, 3, sum(map(len, first)))
    assert start == HEADER_SIZE
    assert log.position == Position(log.active_id, HEADER_SIZE + sum(map(len, first)))

    too_big = _frames("b", 70, 1000)  # ~70 KB: more than the rest of a 64 KiB segment
    before = log.position
    assert log.append_in_place(too_big, len(too_big), sum(map(len, too_big))) is None
    assert log.position == before  # nothing written
    positions = log.append_frames(too_big)  # the caller's fallback rolls where needed
    assert positions[0] == before and positions[-1].segment_id > before.segment_id
    log.sync()
    log.close()

    with open_reader(tmp_path) as reader:
        keys = [rec.key for rec, _pos in reader]
    assert keys == [f"a{i}".encode() for i in range(3)] + [f"b{i}".encode() for i in range(70)]


# -- a new log directory: its entry (and its new parents') made durable before anything is acked --


class DirCallsLayer(OsFileLayer):
    """The real file system, recording its directory-level calls."""

    def __init__(self):
        self.calls = []

    def makedirs(self, path):
        self.calls.append(("makedirs", path))
        super().makedirs(path)

    def sync_dir(self, path):
        self.calls.append(("sync_dir", path))
        super().sync_dir(path)

    def lock_dir(self, path):
        self.calls.append(("lock_dir", path))
        return super().lock_dir(path)


def test_opening_fsyncs_the_parent_of_every_directory_on_the_path_before_locking(tmp_path):
    d = str(tmp_path / "a" / "wal")
    parents = [str(tmp_path / "a")]
    while parents[-1] != "/":
        parents.append(os.path.dirname(parents[-1]))
    for _ in range(2):  # new, then existing (a killed opener may have left it unsynced)
        layer = DirCallsLayer()
        Wal.open(WalConfig(dir=d), layer=layer)[0].close()
        assert layer.calls[: len(parents) + 2] == [("makedirs", d)] + [("sync_dir", p) for p in parents] + [
            ("lock_dir", d)
        ]


def test_acked_records_in_a_new_directory_survive_a_power_loss():
    fs = FaultFS()
    fs.makedirs("/srv")
    fs.sync_dir("/")
    cfg = WalConfig(dir="/srv/a/wal", fsync_policy=FsyncPolicy.always())
    with Wal.open(cfg, layer=fs)[0] as wal:
        wal.append(Record.put(b"k", b"acked"))
        after = fs.crash(POWER_LOSS)  # power fails while the log is open
    wal2, _info = Wal.open(cfg, layer=after)
    with wal2, wal2.read_from(Position(0, 0)) as reader:
        assert [(r.key, bytes(r.value)) for r, _ in reader] == [(b"k", b"acked")]


def test_a_failed_fsync_of_a_new_directorys_parent_fails_the_open():
    fs = FaultFS()
    fault = fs.inject("sync_dir", errno.EIO, path="/srv")
    with pytest.raises(WalIOError, match="entry of /srv/wal durable failed .fsync of /srv.") as e:
        Wal.open(WalConfig(dir="/srv/wal"), layer=fs)
    assert fault.fired == 1 and e.value.__cause__.errno == errno.EIO
    assert ("/srv", ("mkdir", "wal")) in fs.pending_dir_ops()  # still not durable


def test_a_directory_left_unsynced_by_a_killed_opener_is_made_durable_by_the_next():
    fs = FaultFS()
    fs.inject("sync_dir", CRASH)  # killed right after its mkdir, before any fsync
    with pytest.raises(SimulatedCrash):
        Wal.open(WalConfig(dir="/srv/wal"), layer=fs)
    kernel = fs.process_crash()  # the directories exist, in the page cache only
    assert kernel.exists("/srv/wal") and not kernel.crash().exists("/srv")
    with Wal.open(WalConfig(dir="/srv/wal", fsync_policy=FsyncPolicy.always()), layer=kernel)[0] as wal:
        wal.append(Record.put(b"k", b"acked"))
    assert kernel.crash().exists("/srv/wal/000000.wal")


def test_an_unreadable_parent_is_skipped_unless_the_open_created_a_directory_in_it():
    fs = FaultFS()
    fs.makedirs("/srv/wal")
    fs.sync_dir("/")
    fs.sync_dir("/srv")
    fs.inject("sync_dir", errno.EACCES)  # the first: /srv, the parent of /srv/wal
    Wal.open(WalConfig(dir="/srv/wal"), layer=fs)[0].close()  # /srv/wal existed: skipped
    fs.inject("sync_dir", errno.EACCES)
    with pytest.raises(WalIOError, match="entry of /srv/new durable failed .fsync of /srv.: Permission denied"):
        Wal.open(WalConfig(dir="/srv/new"), layer=fs)


def test_an_interrupt_between_a_write_and_its_bookkeeping_stops_the_log_instead_of_misplacing_records():
    """A KeyboardInterrupt (SIGINT in the appending thread) can land after the bytes were written but
    before the log moved its end: the next record's Position would not be where its bytes go."""
    fs = FaultFS()
    cfg = WalConfig(dir="/w", fsync_policy=FsyncPolicy.always())
    wal, _ = Wal.open(cfg, layer=fs)
    wal.append(Record.put(b"a", b"1"))
    fired: list[int] = []

    def interrupt_once(_layer, call):  # stands in for a signal handler right after the write
        if call.op == "append" and not fired:
            fired.append(1)
            raise KeyboardInterrupt

    fs.observe(interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        wal.append(Record.put(b"b", b"2"))
    with pytest.raises(WalIOError, match="interrupted"):
        wal.append(Record.put(b"c", b"3"))
    wal.close()
    with Wal.open(cfg, layer=fs)[0] as again, again.read_from(Position(0, 0)) as reader:
        keys = [r.key for r, _ in reader]
    assert keys[0] == b"a" and b"c" not in keys  # "b" was never acknowledged: it may or may not be there


def test_a_batch_that_fits_in_a_segment_is_written_whole_or_not_at_all_across_a_roll():
    """The batch does not fit in the rest of the active segment: the log rolls first, then writes it as
    one unit; a roll that fails leaves none of it (a caller retrying it duplicates nothing)."""
    fs = FaultFS()
    cfg = WalConfig(dir="/w", max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    wal, _ = Wal.open(cfg, layer=fs)
    wal.append_batch([Record.put(b"old%d" % i, b"x" * 300) for i in range(8)])  # most of segment 0
    batch = [Record.put(b"new%d" % i, b"y" * 300) for i in range(10)]  # ~3.2 KB: fits in one
    fs.inject("create", errno.EIO)
    with pytest.raises(WalIOError):
        wal.append_batch(batch)
    wal.close()
    with Wal.open(cfg, layer=fs)[0] as again:
        with again.read_from(Position(0, 0)) as reader:
            assert not [r for r, _ in reader if r.key.startswith(b"new")]
        positions = again.append_batch(batch)  # and when it works
        assert len({p.segment_id for p in positions}) == 1
        with again.read_from(positions[0]) as reader:
            assert [(r.key, p) for (r, p), _ in zip(reader, batch)] == [(r.key, p) for r, p in zip(batch, positions)]
