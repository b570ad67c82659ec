"""Group-commit decisions (pure): who an fsync acknowledges, and when the next fsync is due."""

from hypothesis import given
from hypothesis import strategies as st

from nori_wal import FsyncPolicy, Position
from nori_wal.commit import GroupCommit, fsync_due_at, needs_fsync, overlap_fsync

INF = float("-inf")


def test_always_fsyncs_at_once_and_acks_only_after():
    gc = GroupCommit(FsyncPolicy.always(), Position(0, 32))
    assert gc.fsync_due() is None
    assert gc.written(Position(0, 100), "a") is False
    assert gc.fsync_due() == INF
    gc.fsync_started(1.0)
    assert gc.fsync_due() is None  # one fsync at a time
    assert gc.written(Position(0, 200), "b") is False  # written while the fsync runs
    assert gc.fsync_done(Position(0, 100)) == ["a"]  # covers a, not b
    assert gc.fsync_due() == INF
    gc.fsync_started(2.0)
    assert gc.fsync_done(Position(0, 200)) == ["b"]
    assert gc.waiting == 0


def test_batch_waits_for_the_window_even_without_new_writes():
    gc = GroupCommit(FsyncPolicy.batch(0.005), Position(0, 32))
    gc.written(Position(0, 50), "a")
    assert gc.fsync_due() == INF  # no fsync yet: the first one is not delayed
    gc.fsync_started(10.0)
    gc.fsync_done(Position(0, 50))
    gc.written(Position(0, 80), "b")
    assert gc.fsync_due() == 10.005  # the deadline: a timer, not a next write


def test_os_acks_after_the_write_and_never_fsyncs():
    gc = GroupCommit(FsyncPolicy.os(), Position(0, 32))
    assert gc.written(Position(0, 100), "a") is True
    assert gc.fsync_due() is None


def test_a_sync_request_forces_an_fsync_under_every_policy():
    for policy in (FsyncPolicy.os(), FsyncPolicy.batch(10.0)):
        gc = GroupCommit(policy, Position(0, 32))
        gc.fsync_started(100.0)
        gc.fsync_done(Position(0, 32))
        gc.written(Position(0, 64), "a")
        assert gc.sync_requested(Position(0, 64), "sync") is False
        assert gc.fsync_due() == INF
        gc.fsync_started(100.1)
        assert gc.fsync_done(Position(0, 64))[-1] == "sync"


def test_a_sync_request_with_nothing_unsynced_is_answered_at_once():
    gc = GroupCommit(FsyncPolicy.always(), Position(0, 32))
    assert gc.sync_requested(Position(0, 32), "s") is True


def test_a_roll_makes_earlier_segments_durable():
    gc = GroupCommit(FsyncPolicy.always(), Position(0, 32))
    gc.written(Position(0, 4000), "old")
    gc.written(Position(1, 100), "new")
    gc.fsync_started(0.0)
    assert gc.fsync_done(Position(1, 32)) == ["old"]  # the roll fsynced segment 0
    gc.fsync_started(0.1)
    assert gc.fsync_done(Position(1, 100)) == ["new"]


def test_fail_all_returns_every_waiting_ticket():
    gc = GroupCommit(FsyncPolicy.always(), Position(0, 32))
    gc.written(Position(0, 50), "a")
    gc.fsync_started(0.0)
    gc.written(Position(0, 70), "b")
    assert gc.fail_all() == ["a", "b"] and not gc.in_flight and gc.waiting == 0


@given(
    st.lists(st.tuples(st.integers(min_value=1, max_value=500), st.booleans()), max_size=60),
    st.sampled_from(["always", "batch", "os"]),
)
def test_nothing_is_acked_before_an_fsync_covers_it(steps, kind):
    """Under always and batch every ack is covered by a finished fsync; under os acks come with the write."""
    policy = FsyncPolicy.parse(kind)
    gc = GroupCommit(policy, Position(0, 32))
    end, clock, fsync_target, durable = 32, 0.0, None, 32
    ends = {}
    acked = []
    for i, (size, finish) in enumerate(steps):
        end += size
        ends[i] = end
        if gc.written(Position(0, end), i):
            assert kind == "os"
            acked.append(i)
        clock += 0.001
        due = gc.fsync_due()
        if due is not None and due <= clock and fsync_target is None:
            gc.fsync_started(clock)
            fsync_target = end
        if finish and fsync_target is not None:
            durable = fsync_target
            for t in gc.fsync_done(Position(0, durable)):
                assert ends[t] <= durable
                acked.append(t)
            fsync_target = None
    assert acked == sorted(acked)
    assert needs_fsync(policy) == (kind != "os")


def test_fsync_due_at_and_overlap():
    assert fsync_due_at(FsyncPolicy.always(), 5.0, True) == INF
    assert fsync_due_at(FsyncPolicy.batch(0.01), 5.0, True) == 5.01
    assert fsync_due_at(FsyncPolicy.os(), 5.0, True) is None
    assert fsync_due_at(FsyncPolicy.always(), 5.0, False) is None
    assert overlap_fsync(True, True) and not overlap_fsync(True, False) and not overlap_fsync(False, True)


@given(st.lists(st.tuples(st.integers(min_value=1, max_value=6), st.booleans()), max_size=40))
def test_a_written_group_is_acked_whole_and_in_order(groups):
    """The writer hands over one entry per written group; an fsync acks whole groups, oldest first."""
    gc = GroupCommit(FsyncPolicy.always(), Position(0, 32))
    end, acked, sent, target = 32, [], 0, None
    for size, finish in groups:
        tickets = list(range(sent, sent + size))
        sent += size
        end += 100
        assert gc.written_group(Position(0, end), tickets) is False
        assert gc.waiting == sent - len(acked)
        if target is None:
            gc.fsync_started(0.0)
            target = end
        if finish:
            acked += gc.fsync_done(Position(0, target))
            target = None
    if target is not None:
        acked += gc.fsync_done(Position(0, target))
    gc.fsync_started(0.0)
    acked += gc.fsync_done(Position(0, end))
    assert acked == list(range(sent)) and gc.waiting == 0
