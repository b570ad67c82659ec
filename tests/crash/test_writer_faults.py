"""The writer process under injected faults: EIO/ENOSPC is fail-stop, named crash points are survivable.

Real writer processes on real files; the faults come from a FaultyOsLayer
pickled into the writer (``WriterProcess.spawn(..., layer=...)``).
"""

import errno
import threading

import pytest

from nori_wal import FsyncPolicy, Position, Record, WalConfig, WalError, WalIOError, open_reader
from nori_wal.client import WalClient
from nori_wal.testing import CRASH
from nori_wal.testing.faultfs import Fault
from nori_wal.testing.faultyos import FaultyOsLayer
from nori_wal.writer_proc import WriterProcess

EXIT_IO = 4


def config(d, seg=64 * 1024):
    return WalConfig(dir=str(d), max_segment_size=seg, fsync_policy=FsyncPolicy.always())


def produce(directory, threads=4, per_thread=400, batch=1):
    """Threads append until their call fails; returns (acked keys, errors) — errors by thread."""
    acked, errors, lock = {}, {}, threading.Lock()
    client = WalClient.for_dir(directory, timeout=10)

    def work(t):
        for j in range(0, per_thread, batch):
            recs = [Record.put(b"p%d-%05d" % (t, j + b), b"v" * (50 + (j % 7) * 30)) for b in range(batch)]
            try:
                pos = [client.append(recs[0])] if batch == 1 else client.append_batch(recs)
            except WalError as exc:
                with lock:
                    errors[t] = exc
                return
            with lock:
                acked.update((r.key, p) for r, p in zip(recs, pos))

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    client.close()
    assert not any(t.is_alive() for t in ts)
    return acked, errors


def read_log(directory):
    with open_reader(str(directory)) as r:
        return [(rec.key, pos) for rec, pos in r]


def check_acked(directory, acked):
    got = read_log(directory)
    keys = [k for k, _ in got]
    assert len(keys) == len(set(keys)), "a record appears twice"
    where = dict(got)
    missing = [k for k in acked if where.get(k) != acked[k]]
    assert not missing, f"{len(missing)} acknowledged records lost or moved, e.g. {missing[:3]}"
    return got


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "op,err,partial,nth",
    [
        ("sync", errno.EIO, None, 40),  # a data fsync of the active segment
        ("append", errno.ENOSPC, 17, 60),  # a group write: 17 bytes land, then the disk is full
        ("append", errno.EIO, None, 60),
        ("preallocate", errno.ENOSPC, 100, 3),  # the zeros ahead of the third segment's records: the disk is full
    ],
)
def test_writer_fail_stop_on_injected_errors(tmp_path, op, err, partial, nth, crash_counts):
    cfg = config(tmp_path)
    layer = FaultyOsLayer([Fault(op, err, nth=nth, path=".wal", partial=partial)])
    writer = WriterProcess.spawn(cfg, layer=layer)
    try:
        acked, errors = produce(tmp_path)
        # Every producer ended with an error: those waiting on the failed group hear why
        # (WalIOError), the rest find the writer gone (WriterUnavailableError).
        assert len(errors) == 4
        assert any(isinstance(e, WalIOError) for e in errors.values()), errors
        assert any(
            errno.errorcode[err] in str(e) or "fail-stop" in str(e) or "error" in str(e).lower()
            for e in errors.values()
        )
        assert writer.wait(30) == EXIT_IO  # it stopped itself: no retry, no more acks
    finally:
        if writer.is_alive():
            writer.kill()
        writer.stop()  # reaps it and closes its lifeline pipe
    with WriterProcess.spawn(cfg) as again:  # the next start recovers
        assert again.recovery_info.valid_records >= len(acked)
    check_acked(tmp_path, acked)
    crash_counts["fault_cases"] += 1


# Named crash points: the writer SIGKILLs itself exactly there (etcd's walBeforeSync style).
# The first segment is created at startup, so ``nth=1`` of a .tmp operation crashes the start itself.
CRASH_POINTS = [
    ("sync", 25, ".wal"),  # during a data fsync
    ("append", 30, ".wal"),  # before a group write
    ("create", 2, ".tmp"),  # creating the next segment
    ("sync", 2, ".tmp"),  # fsyncing the next segment's header
    ("rename", 2, ".tmp"),  # renaming it into place
    ("sync_dir", 2, "DIR"),  # fsyncing the directory after the roll (DIR: the log directory, not its parents)
    ("rename", 1, ".tmp"),  # the very first segment, while starting
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op,nth,path", CRASH_POINTS, ids=[f"{o}{n}{p or ''}" for o, n, p in CRASH_POINTS])
def test_writer_killed_at_named_crash_points(tmp_path, op, nth, path, crash_counts):
    cfg = config(tmp_path, seg=16 * 1024)
    layer = FaultyOsLayer([Fault(op, CRASH, nth=nth, path=str(tmp_path) if path == "DIR" else path)])
    if nth == 1:
        with pytest.raises(WalError, match="exited with code -9 before serving"):
            WriterProcess.spawn(cfg, layer=layer)
        acked = {}
    else:
        writer = WriterProcess.spawn(cfg, layer=layer)
        try:
            acked, errors = produce(tmp_path, threads=3, per_thread=300)
            assert writer.wait(30) == -9 and len(errors) == 3
        finally:
            if writer.is_alive():
                writer.kill()
            writer.stop()
    with WriterProcess.spawn(cfg) as again:
        client = WalClient.for_dir(tmp_path, timeout=10)
        with client:
            pos = client.append(Record.put(b"after", b"restart"))
    got = check_acked(tmp_path, acked)
    assert got[-1] == (b"after", pos) and pos > max(acked.values(), default=Position(0, 0))
    assert again.returncode == 0
    crash_counts["kills"] += 1
    crash_counts["torture_acked"] += len(acked)
