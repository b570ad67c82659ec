"""Exhaustive crash states: every syscall boundary of each workload, under each policy, crashed many ways.

Invariant (checked for every state): every acknowledged record is recovered
byte-identical at the position its append returned; the recovered log is one
contiguous run of what was written; a power loss right after recovery changes
nothing; appending after recovery works. Then the same explorer is run on
deliberately broken disks and a broken Wal, to show the checks can fail.
"""

import errno

import pytest

from nori_wal import Position, Record, Wal
from nori_wal.testing import FaultFS
from nori_wal.testing.crashsim import (
    POLICIES,
    WORKLOADS,
    InvariantViolation,
    Step,
    explore,
    run_threaded_workload,
    run_workload,
    run_writer_workload,
    workload_config,
)


def count(crash_counts, stats):
    crash_counts["crash_states"] += stats.states
    crash_counts["crash_images"] += stats.images
    crash_counts["recovery_crash_states"] += stats.recovery_crashes
    crash_counts["lost"] += stats.lost


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_every_crash_state_of_a_workload(tmp_path, workload, policy, crash_counts):
    run = run_workload(f"{workload}/{policy}", workload_config(str(tmp_path), policy), WORKLOADS[workload], seed=7)
    assert sum(1 for m in run.moments if m.call.op == "rename") >= 2  # it rolled segments
    if workload == "gc":  # one GC deleted several segments: crashes between its unlinks leave no hole
        assert sum(1 for m in run.moments if m.call.op == "unlink" and m.call.path.endswith(".wal")) >= 3
    stats = explore(run, extra_tears=1, seed=7)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 500


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("batch", [1, 5])
def test_every_crash_state_of_threads_sharing_fsyncs(tmp_path, policy, batch, crash_counts):
    """Group commit: four threads append at once; acknowledged records are a set, not a prefix."""
    run = run_threaded_workload(
        f"threads/{policy}/batch{batch}",
        workload_config(str(tmp_path), policy),
        threads=4,
        appends=12 if batch == 1 else 4,
        batch=batch,
        seed=batch,
    )
    stats = explore(run, seed=batch)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 300


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("batch", [1, 6])
def test_every_crash_state_of_the_writer_process_loop(tmp_path, policy, batch, crash_counts):
    """The writer's own loop (group commit, flush thread, ZeroMQ acks) on FaultFS, crashed at every syscall.

    A SIGKILL keeps the page cache, so only a power loss shows an ack sent before its fsync.
    """
    run = run_writer_workload(
        f"writer/{policy}/batch{batch}",
        workload_config(str(tmp_path), policy),
        producers=4,
        appends=30 if batch == 1 else 6,
        batch=batch,
        seed=batch,
    )
    assert sum(1 for m in run.moments if m.call.op == "rename") >= 2  # it rolled segments
    stats = explore(run, seed=batch)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 300


@pytest.mark.parametrize("policy,workload", [("always", "appends"), ("os", "gc"), ("batch", "batches")])
def test_crashes_during_recovery(tmp_path, policy, workload, crash_counts):
    """Recovery itself crashed at each of its syscalls, for a sample of states it had to repair."""
    run = run_workload(f"{workload}/{policy}", workload_config(str(tmp_path), policy), WORKLOADS[workload], seed=3)
    stats = explore(run, seed=3, recovery_crash_every=30 if workload != "batches" else 6)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.recovery_crashes >= 200


# -- the checks have teeth: broken disks and a broken Wal are caught --------------------------

SMALL = [Step("append", 40, 150)]


class HonestAfterCrash(FaultFS):
    """A disk that misbehaves while the workload runs; the disk recovery sees afterwards is honest."""

    def crash(self, spec=None):
        post = super().crash(spec) if spec is not None else super().crash()
        post.__class__ = FaultFS
        return post


class LyingDisk(HonestAfterCrash):
    """fdatasync returns success but writes nothing (a disk cache that ignores flushes)."""

    def _sync(self, f):
        with self._lock:
            self._enter("sync", f.path)
            self._done("sync", f.path)


class NoDirSync(HonestAfterCrash):
    """fsync of a directory does nothing (the etcd #6368 / KAFKA-3968 bug, on the disk's side)."""

    def sync_dir(self, path):
        with self._lock:
            self._enter("sync_dir", path)


class LosesTruncates(FaultFS):
    """An fsync after a truncate does not make the truncate durable."""

    def _sync(self, f):
        if any(op[0] == "t" for op in f.ino.pending):
            with self._lock:
                self._enter("sync", f.path)
                f.ino.pending.clear()
                return
        super()._sync(f)


@pytest.mark.parametrize(
    "disk,finding", [(LyingDisk, "lost"), (NoDirSync, "lost"), (LosesTruncates, "repairs were not durable")]
)
def test_the_explorer_catches_a_broken_disk(tmp_path, disk, finding):
    run = run_workload("broken", workload_config(str(tmp_path), "always"), SMALL, seed=1, layer=disk)
    with pytest.raises(InvariantViolation, match=finding):
        explore(run)


def test_the_explorer_catches_acks_before_the_fsync(tmp_path, monkeypatch):
    """The Rust nori-wal's Batch acknowledged before its fsync; ours must not, and the explorer notices."""
    monkeypatch.setattr("nori_wal.wal.needs_fsync", lambda policy: False)
    run = run_workload("early-ack", workload_config(str(tmp_path), "always"), SMALL, seed=1)
    with pytest.raises(InvariantViolation, match="lost"):
        explore(run)


@pytest.mark.timeout(120)
def test_the_explorer_catches_a_writer_that_acks_before_its_fsync(tmp_path, monkeypatch):
    from nori_wal.commit import GroupCommit

    monkeypatch.setattr(GroupCommit, "written_group", lambda self, end, tickets: True)
    run = run_writer_workload("writer-early-ack", workload_config(str(tmp_path), "always"), producers=3, appends=10)
    with pytest.raises(InvariantViolation, match="lost"):
        explore(run)


@pytest.mark.parametrize(
    "damage,finding",
    [
        (lambda got: got[:3] + got[4:], "contiguous"),  # a hole
        (lambda got: got[:4] + got[3:], "contiguous"),  # a duplicate
        (lambda got: got[:3] + [got[4], got[3]] + got[5:], "contiguous"),  # reordered
        (lambda got: got + [(Record.put(b"r9999999", b""), Position(9, 32))], "only"),  # invented
        (lambda got: [(got[0][0]._replace(value=b"changed"), got[0][1])] + got[1:], "differs"),
        (lambda got: [(got[0][0], Position(0, 99))] + got[1:], "its append returned"),
    ],
)
def test_the_prefix_check_catches_holes_duplicates_and_inventions(tmp_path, damage, finding):
    from nori_wal.testing.crashsim import Explorer, read_all

    run = run_workload("prefix", workload_config(str(tmp_path), "always"), [Step("append", 8, 50)], seed=1)
    wal, _ = Wal.open(run.config, layer=run.moments[-1].fs.process_crash())
    with wal:
        got = read_all(wal)
    ex = Explorer(run)
    assert ex._check_prefix(got, repaired=False).count == 8
    with pytest.raises(InvariantViolation, match=finding):
        ex._check_prefix(damage(got), repaired=False)


def test_injected_eio_is_not_a_crash_state_surprise(tmp_path):
    """Sanity: FaultFS errors are OSErrors with the errno asked for (the explorer relies on it)."""
    fs = FaultFS()
    fs.inject("sync_dir", errno.EIO)
    with pytest.raises(Exception) as e:
        Wal.open(workload_config(str(tmp_path), "always"), layer=fs)
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.EIO


@pytest.mark.parametrize("policy", ["always", "batch"])
def test_the_explorer_catches_an_fsync_deferred_to_the_next_call(tmp_path, monkeypatch, policy):
    """An append that returns before its fsync and pays it at the start of the next call (append, sync, close).

    Every syscall finds the acknowledged records durable (the owed fsync comes
    before the next write): only a crash at the instant the append returned
    loses one, so the explorer takes a moment at every acknowledgement.
    """
    owed = []
    real_await = Wal._await_durable

    def await_later(self, end, force=False):
        pay(self)
        if force:
            real_await(self, end, force)
        else:
            owed.append(end)  # BUG on purpose: acknowledged before it is durable

    def pay(wal):
        while owed:
            real_await(wal, owed.pop(), True)

    def pays_first(method):
        def call(self, *args):
            pay(self)
            return method(self, *args)

        return call

    monkeypatch.setattr(Wal, "_await_durable", await_later)
    for name in ("append", "append_batch", "close"):
        monkeypatch.setattr(Wal, name, pays_first(getattr(Wal, name)))
    run = run_workload("deferred-fsync", workload_config(str(tmp_path), policy), WORKLOADS["appends"], seed=7)
    with pytest.raises(InvariantViolation, match=r"right after the append of record \d+ returned.*lost"):
        explore(run, extra_tears=1, seed=7)


def test_every_acknowledgement_is_a_crash_moment(tmp_path):
    """One moment per append and per GC that returned, sharing the snapshot of the syscall before it."""
    run = run_workload("acks", workload_config(str(tmp_path), "always"), WORKLOADS["gc"], seed=7)
    acks = [m for m in run.moments if m.call.op == "ack"]
    appends = sum(s.n if s.kind == "append" else 1 for s in WORKLOADS["gc"] if s.kind in ("append", "batch"))
    gcs = sum(1 for s in WORKLOADS["gc"] if s.kind == "gc")
    assert len(acks) == appends + gcs
    shared = sum(1 for prev, m in zip(run.moments, run.moments[1:]) if m.call.op == "ack" and m.fs is prev.fs)
    assert shared == len(acks)  # no syscall between the last moment and an ack: no new snapshot
    assert [m.gc_done for m in acks if "GC" in m.note] == sorted(m.gc_floor for m in acks if "GC" in m.note)


def test_the_explorer_catches_a_gc_that_does_not_fsync_the_directory(tmp_path, monkeypatch):
    """GC unlinks without fsyncing the directory: a power loss brings deleted segments back after it returned.

    The next segment's creation fsyncs the directory and hides it, so only a
    check that a returned GC's segments stay deleted finds it.
    """
    from nori_wal.segment_log import SegmentLog

    real_gc = SegmentLog.delete_segments_before

    def gc_without_dir_fsync(self, position):
        self.layer.sync_dir = lambda path: None  # BUG on purpose (the instance attribute shadows the method)
        try:
            return real_gc(self, position)
        finally:
            del self.layer.sync_dir

    monkeypatch.setattr(SegmentLog, "delete_segments_before", gc_without_dir_fsync)
    run = run_workload("gc-no-dir-fsync", workload_config(str(tmp_path), "always"), WORKLOADS["gc"], seed=7)
    with pytest.raises(InvariantViolation, match="is back after recovery"):
        explore(run, extra_tears=1, seed=7)
