"""Crash states through a consumer's commit: at every syscall boundary, crashed many ways.

Invariant: after any crash the cursor file reads back as the old value or the
new one -- never garbage, never an error, never anything else -- and it is the
new one once the commit returned; a commit after the crash works.
"""

import pytest

from nori_wal.cursor import CursorState
from nori_wal.cursor_store import ensure_consumers_dir, read_cursor, write_cursor
from nori_wal.position import Position
from nori_wal.testing import FaultFS
from nori_wal.testing.faultfs import POWER_LOSS, PROCESS_CRASH, CrashSpec, SimulatedCrash

DIR = "/log"
OLD = CursorState("idx", Position(3, 500), Position(3, 400), 11)
NEW = CursorState("idx", Position(4, 96), Position(4, 32), 22)


def base() -> FaultFS:
    fs = FaultFS()
    fs.makedirs(DIR)
    fs.sync_dir("/")
    ensure_consumers_dir(fs, DIR)
    write_cursor(fs, DIR, OLD)
    return fs


def specs():
    yield POWER_LOSS
    yield PROCESS_CRASH
    yield CrashSpec(keep_ops=None, keep_dir_ops=None)  # everything issued reached the disk
    for keep_dir in (1, 2, 3):
        yield CrashSpec(keep_ops=None, keep_dir_ops=keep_dir)
    for torn in (1, 7, 40, 60):
        yield CrashSpec(keep_ops=0, torn=torn, keep_dir_ops=None)
        yield CrashSpec(keep_ops=0, torn=torn, zero_fill=True, keep_dir_ops=None)


def test_syscalls_of_one_commit():
    fs = base()
    trace = fs.start_trace()
    write_cursor(fs, DIR, NEW)
    ops = [c.op for c in trace]
    assert ops == ["exists", "create", "append", "sync", "rename", "sync_dir"]


@pytest.mark.parametrize("leftover_tmp", [False, True])
def test_every_crash_state_of_a_commit_leaves_the_old_or_the_new_cursor(leftover_tmp, crash_counts):
    states = 0
    k = 0
    while True:
        fs = base()
        if leftover_tmp:  # a previous commit died after creating its tmp file
            fh = fs.create(f"{DIR}/consumers/idx.cursor.tmp")
            fh.append(b"half a curs")
            fh.close()
        start = fs.syscalls
        fs.crash_after(start + k)
        finished = False
        try:
            write_cursor(fs, DIR, NEW)
            finished = True
        except SimulatedCrash:
            pass
        for spec in specs():
            after = fs.crash(spec)
            got = read_cursor(after, DIR, "idx")
            assert got in (OLD, NEW), (k, spec.label(), got)
            if finished:
                assert got == NEW, (k, spec.label())
            write_cursor(after, DIR, CursorState("idx", Position(9, 32), None, 33))  # a later commit works
            assert read_cursor(after.crash(POWER_LOSS), DIR, "idx").next == Position(9, 32)
            states += 1
        if finished:
            break
        k += 1
    crash_counts["crash_states"] += states
    assert k >= 6 and states >= 6 * 10


def test_a_failed_fsync_leaves_the_old_cursor_and_raises_a_wal_io_error():
    import errno

    from nori_wal.errors import WalIOError

    fs = base()
    fs.inject("sync", errno.EIO)
    with pytest.raises(WalIOError):
        write_cursor(fs, DIR, NEW)
    assert read_cursor(fs, DIR, "idx") == OLD
    assert read_cursor(fs.crash(POWER_LOSS), DIR, "idx") == OLD
