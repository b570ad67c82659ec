"""A failed fsync or write is fail-stop: nothing from the group is acknowledged, every later call fails,
reopen recovers.

Linux may drop dirty pages after a failed fsync, so a retry can "succeed"
without the data (PostgreSQL fsyncgate, 2018). FaultFS models exactly that
(``drop_unsynced``): a log that retried the fsync and acknowledged would lose
the records at the next power loss, and these tests would see it.
"""

import errno
import threading

import pytest

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig, WalError, WalIOError
from nori_wal.codec import encode_record
from nori_wal.segment_log import SegmentLog
from nori_wal.testing import FaultFS

POLICIES = {"always": FsyncPolicy.always(), "batch": FsyncPolicy.batch(1e-6)}


def rec(i, size=150):
    return Record.put(b"r%07d" % i, bytes([i % 251]) * size)


def config(tmp_path, policy="always", seg=4096):
    return WalConfig(dir=str(tmp_path), max_segment_size=seg, fsync_policy=POLICIES[policy])


def recovered_keys(cfg, fs):
    wal, info = Wal.open(cfg, layer=fs)
    with wal, wal.read_from(Position(0, 0)) as r:
        return [bytes(x.key) for x, _ in r], info


def drive(wal, start=0, n=200, batch=1):
    """Append until the log fails; returns (acked indices, the error)."""
    acked = []
    for i in range(start, start + n, batch):
        recs = [rec(j) for j in range(i, i + batch)]
        try:
            if batch == 1:
                wal.append(recs[0])
            else:
                wal.append_batch(recs)
        except WalError as exc:
            return acked, exc, list(range(i, i + batch))
        acked.extend(range(i, i + batch))
    raise AssertionError("the injected fault never fired")


def assert_fail_stopped(wal, err):
    """Every later call raises the very same error; nothing more reaches the disk."""
    for call in (
        lambda: wal.append(rec(10**6)),
        lambda: wal.append_batch([rec(10**6)]),
        wal.sync,
        lambda: wal.delete_segments_before(Position(10**6, 0)),
    ):
        with pytest.raises(WalIOError) as e:
            call()
        assert e.value is err


# (operation, which call after open fails, only on paths containing, what it models)
FAULTS = [
    ("sync", 1, None, "the first data fsync"),
    ("sync", 7, None, "a later data fsync"),
    ("append", 5, None, "the write of an append group (EIO)"),
    ("sync", 1, ".tmp", "the fsync of the next segment's header"),
    ("sync_dir", 1, None, "the directory fsync of the next segment"),
    ("create", 1, None, "creating the next segment's file"),
    ("rename", 1, None, "renaming the next segment into place"),
]


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("op,nth,path,what", FAULTS, ids=[f"{op}{nth}{path or ''}" for op, nth, path, _ in FAULTS])
@pytest.mark.parametrize("batch", [1, 4])
def test_eio_is_fail_stop(tmp_path, policy, op, nth, path, what, batch, crash_counts):
    cfg = config(tmp_path, policy)
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    fault = fs.inject(op, errno.EIO, nth=nth, path=path)
    acked, err, failed = drive(wal, batch=batch)
    assert fault.fired == 1
    assert isinstance(err, WalIOError) and isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.EIO
    assert "fail-stop" in str(err)
    trace = fs.start_trace()
    assert_fail_stopped(wal, err)
    wal.close()
    assert not [c for c in trace if c.op in ("append", "sync", "truncate")], "wrote or fsynced after failing"
    # Reopen after a power loss and after a process crash: every acknowledged record, in order;
    # of the failed group at most a prefix (it was never acknowledged), nothing else.
    want = [b"r%07d" % i for i in acked]
    for post in (fs.crash(), fs.process_crash()):
        keys, _ = recovered_keys(cfg, post)
        assert keys[: len(want)] == want
        assert keys[len(want) :] == [b"r%07d" % i for i in failed][: len(keys) - len(want)]
        crash_counts["fault_cases"] += 1


@pytest.mark.parametrize("partial", [0, 1, 7, 100, None])
@pytest.mark.parametrize("truncate_fails", [False, True])
def test_enospc_on_write_leaves_nothing_half_written_acknowledged(tmp_path, partial, truncate_fails, crash_counts):
    cfg = config(tmp_path, seg=64 * 1024)
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    for i in range(5):
        wal.append(rec(i))
    batch = [rec(i) for i in range(5, 9)]
    size = sum(len(encode_record(r)) for r in batch)
    fs.inject("append", errno.ENOSPC, partial=size - 3 if partial is None else partial)
    if truncate_fails:
        fs.inject("truncate", errno.EIO)
    with pytest.raises(WalIOError) as e:
        wal.append_batch(batch)
    assert e.value.__cause__.errno == errno.ENOSPC and "No space left" in str(e.value)
    assert "segment 0" in str(e.value)
    assert_fail_stopped(wal, e.value)
    visible = fs.files()
    wal.close()
    seg = next(d for p, d in visible.items() if p.endswith("000000.wal"))
    if not truncate_fails:
        # The partial group was cut back at once: readers never see half a record there.
        assert len(seg) == 32 + sum(len(encode_record(rec(i))) for i in range(5))
    for post in (fs.crash(), fs.process_crash()):
        keys, _info = recovered_keys(cfg, post)
        assert keys[:5] == [b"r%07d" % i for i in range(5)]
        assert keys[5:] == [b"r%07d" % i for i in range(5, 9)][: len(keys) - 5]  # never acked: maybe a prefix
        crash_counts["fault_cases"] += 1


def test_eio_fails_every_waiting_thread_and_acks_nothing_after_it(tmp_path, crash_counts):
    """Group commit: threads waiting on the failed fsync all get the error; no append after it returns."""
    cfg = config(tmp_path, seg=1024 * 1024)
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    fs.inject("sync", errno.EIO, nth=20)
    acked, errors, lock = [], [], threading.Lock()
    start = threading.Barrier(8)

    def work(t):
        start.wait()
        for j in range(200):
            i = t * 1000 + j
            try:
                wal.append(rec(i, 60))
            except WalError as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                acked.append(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 8 and all(isinstance(e, WalIOError) for e in errors)
    assert len({id(e) for e in errors}) == 1  # the one sticky error
    wal.close()
    keys, _ = recovered_keys(cfg, fs.crash())  # power loss: only what was really fsynced
    assert {b"r%07d" % i for i in acked} <= set(keys)
    crash_counts["fault_cases"] += 1


@pytest.mark.parametrize("op", ["sync", "append"])
def test_close_after_a_failed_seal_releases_the_lock_and_recovers(tmp_path, op):
    cfg = config(tmp_path)
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    for i in range(3):
        wal.append(rec(i))
    fs.inject(op, errno.EIO)
    with pytest.raises(WalIOError):
        wal.close()
    keys, _ = recovered_keys(cfg, fs.crash())
    assert keys == [b"r%07d" % i for i in range(3)]
    keys, _ = recovered_keys(cfg, fs)  # same process: the lock was released
    assert keys == [b"r%07d" % i for i in range(3)]


def test_segment_log_is_fail_stop_too(tmp_path):
    cfg = config(tmp_path)
    fs = FaultFS()
    log, _ = SegmentLog.open(cfg, fs)
    log.append_frames([encode_record(rec(0))])
    assert log.sync() == log.position
    durable = log.durable
    log.append_frames([encode_record(rec(1))])
    fs.inject("sync", errno.EIO)
    with pytest.raises(WalIOError) as e:
        log.sync()
    assert log.durable == durable and log.failed is e.value
    for call in (
        lambda: log.append_frames([encode_record(rec(2))]),
        log.sync,
        lambda: log.delete_segments_before(Position(9, 0)),
    ):
        with pytest.raises(WalIOError) as again:
            call()
        assert again.value is e.value
    log.close()
    log2, info = SegmentLog.open(cfg, fs.crash())
    assert info.valid_records == 1
    log2.close()


RECOVERY_OPS = [
    "makedirs",
    "lock_dir",
    "listdir",
    "unlink",
    "sync_dir",
    "open_read",
    "open_append",
    "size",
    "pread",
    "map",
    "truncate",
    "sync",
]


@pytest.mark.parametrize("op", RECOVERY_OPS)
def test_io_errors_while_recovering_surface_as_wal_errors(tmp_path, op):
    """Only WalError subclasses cross the public API: an EIO inside recovery is a WalIOError, not an OSError."""
    cfg = config(tmp_path)
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    for i in range(3):
        wal.append(rec(i))
    crashed = fs.process_crash()  # killed while open: no seal
    wal.close()
    d = str(tmp_path)
    crashed.open_append(d + "/000000.wal").append(b"\x01torn")  # a torn tail: recovery truncates + fsyncs
    crashed.create(d + "/000001.wal.tmp").close()  # a crashed roll's leftover: recovery unlinks it
    trial = crashed.snapshot()
    fault = trial.inject(op, errno.EIO, path=d)  # the log directory's own calls, not its parents' fsyncs
    with pytest.raises(WalIOError) as e:
        Wal.open(cfg, layer=trial)
    assert fault.fired == 1 and e.value.__cause__.errno == errno.EIO and d in str(e.value)
    trial.clear_faults()
    keys, _info = recovered_keys(cfg, trial)  # the lock was released; the next open recovers
    assert keys == [b"r%07d" % i for i in range(3)]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_restart_after_a_failed_fsync_does_not_build_on_dropped_pages(tmp_path, policy):
    """fsyncgate across a restart: the pages the failed fsync dropped still read back on the same kernel.

    Left in the file, recovery would keep them and append after them, and a power loss would then
    take the records acknowledged after the restart as well (the disk holds a hole there). The log
    cuts them off when it stops (nothing past the durable point was acknowledged).
    """
    cfg = WalConfig(dir=str(tmp_path), max_segment_size=1 << 20, fsync_policy=POLICIES[policy])
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    for i in range(5):
        wal.append(rec(i))
    fs.inject("sync", errno.EIO)
    with pytest.raises(WalIOError):
        wal.append(rec(5))
    wal.close()
    restarted = fs.process_crash()  # same kernel: the page cache as it is
    wal2, info = Wal.open(cfg, layer=restarted)
    assert info.valid_records == 5
    for i in range(6, 11):
        wal2.append(rec(i))  # acknowledged after their fsync
    keys, _ = recovered_keys(cfg, restarted.crash())  # then a power loss
    assert keys == [b"r%07d" % i for i in (*range(5), *range(6, 11))]
