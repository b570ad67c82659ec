"""Crash states of the preallocated-zeros write path (Always and Batch policies).

Under the fsyncing policies SegmentLog keeps durable zeros ahead of its write
point and overwrites them with records; a seal cuts them off. On
``PreallocFaultFS`` (FaultFS whose handles have ``OsFile.preallocate``) the
explorer crashes that path at every syscall: zeros written but not yet synced,
records over durable zeros lost (the zeros read back), kept or torn into the
zeros, seals written over zeros with the cut not yet durable, and crashes
inside recovery. Invariants as in test_crash_states.py: every acknowledged
record recovered, the log a contiguous prefix-run of what was written.

Two zero layouts: "segment" (the real constants: 2 MiB of zeros fill a 4 KiB
test segment at its first write) and "short" (512 bytes of zeros ahead, only
writes under 1 KiB preallocate: the zeros run out and are extended again, and
larger writes run past them).
"""

import errno

import pytest

import nori_wal.recovery
import nori_wal.segment_log
from nori_wal import Record, Wal
from nori_wal.inspect_log import inspect_log
from nori_wal.position import Position
from nori_wal.scan import Stop
from nori_wal.segment import segment_ids
from nori_wal.segment_log import SegmentLog
from nori_wal.testing.crashsim import (
    WORKLOADS,
    InvariantViolation,
    Step,
    WorkloadRun,
    crash_variants,
    explore,
    run_threaded_workload,
    run_workload,
    run_writer_workload,
    workload_config,
)
from nori_wal.testing.faultfs import CRASH, CrashSpec, PreallocFaultFS, SimulatedCrash

ZEROS = {"segment": None, "short": (512, 1024)}


def use_zeros(monkeypatch, zeros):
    if ZEROS[zeros] is not None:
        ahead, max_write = ZEROS[zeros]
        monkeypatch.setattr(nori_wal.segment_log, "PREALLOC_BYTES", ahead)
        monkeypatch.setattr(nori_wal.segment_log, "PREALLOC_MAX_WRITE", max_write)


def count(crash_counts, stats):
    crash_counts["crash_states"] += stats.states
    crash_counts["crash_images"] += stats.images
    crash_counts["recovery_crash_states"] += stats.recovery_crashes
    crash_counts["lost"] += stats.lost


def ops(run: WorkloadRun, op: str) -> int:
    return sum(1 for m in run.moments if m.call.op == op)


def zero_overwrites(run: WorkloadRun) -> int:
    """Moments right after a record write that lies over durable zeros of its file (not yet synced)."""
    n = 0
    for m in run.moments:
        pending, path = m.fs.pending_ops(), m.fs.last_written_path()
        if m.call.op != "append" or not pending or pending[-1][0] != "w" or path is None:
            continue
        _, off, data = pending[-1]
        durable = m.fs.crash().files().get(path, b"")
        n += off + len(data) <= len(durable) and not any(durable[off : off + len(data)])
    return n


def assert_the_path_was_taken(run: WorkloadRun):
    assert ops(run, "rename") >= 2  # it rolled segments
    assert ops(run, "preallocate") >= 2  # it wrote zeros ahead...
    assert ops(run, "truncate") >= 1  # ... a seal cut them off ...
    assert zero_overwrites(run) >= 3  # ... and records overwrote durable zeros


@pytest.mark.parametrize(
    "policy,workload,zeros",
    [
        ("always", "appends", "segment"),
        ("always", "batches", "short"),
        ("batch", "gc", "short"),
        ("batch", "batches", "segment"),
    ],
)
def test_every_crash_state_of_the_preallocated_path(tmp_path, monkeypatch, policy, workload, zeros, crash_counts):
    use_zeros(monkeypatch, zeros)
    run = run_workload(
        f"prealloc/{workload}/{policy}/{zeros}",
        workload_config(str(tmp_path), policy),
        WORKLOADS[workload],
        seed=7,
        layer=PreallocFaultFS,
    )
    assert_the_path_was_taken(run)
    stats = explore(run, extra_tears=1, seed=7)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 500


def test_every_crash_state_of_threads_sharing_fsyncs_over_zeros(tmp_path, monkeypatch, crash_counts):
    """Group commit: several unsynced writes over the zeros at once, kept as a prefix or torn."""
    use_zeros(monkeypatch, "short")
    run = run_threaded_workload(
        "prealloc/threads/batch",
        workload_config(str(tmp_path), "batch"),
        threads=4,
        appends=12,
        seed=3,
        layer=PreallocFaultFS,
    )
    assert ops(run, "preallocate") >= 2 and zero_overwrites(run) >= 10
    stats = explore(run, seed=3)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 300


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy,zeros", [("always", "segment"), ("batch", "short")])
def test_every_crash_state_of_the_writer_loop_over_zeros(tmp_path, monkeypatch, policy, zeros, crash_counts):
    """The writer process's loop on the preallocating layer: an ack before its fsync would show as a loss."""
    use_zeros(monkeypatch, zeros)
    run = run_writer_workload(
        f"prealloc/writer/{policy}/{zeros}",
        workload_config(str(tmp_path), policy),
        producers=4,
        appends=20,
        seed=5,
        layer=PreallocFaultFS,
    )
    assert_the_path_was_taken(run)
    stats = explore(run, seed=5)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 300


@pytest.mark.parametrize("policy,workload,zeros", [("always", "appends", "short"), ("batch", "batches", "segment")])
def test_crashes_during_recovery_of_the_preallocated_path(tmp_path, monkeypatch, policy, workload, zeros, crash_counts):
    """Recovery (cutting the zero tail, then fsync) crashed at each of its syscalls, for a sample of states."""
    use_zeros(monkeypatch, zeros)
    run = run_workload(
        f"prealloc/{workload}/{policy}/{zeros}",
        workload_config(str(tmp_path), policy),
        WORKLOADS[workload],
        seed=3,
        layer=PreallocFaultFS,
    )
    stats = explore(run, seed=3, recovery_crash_every=40 if workload == "appends" else 10)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.recovery_crashes >= 150


# -- the explorer has teeth on this path: broken variants are caught ---------------------------

SMALL = [Step("append", 40, 150)]


def explore_small(tmp_path):
    run = run_workload(
        "prealloc-broken", workload_config(str(tmp_path), "always"), SMALL, seed=1, layer=PreallocFaultFS
    )
    assert ops(run, "preallocate") >= 1
    return explore(run)


def test_the_explorer_catches_acks_before_the_fsync_over_zeros(tmp_path, monkeypatch):
    monkeypatch.setattr("nori_wal.wal.needs_fsync", lambda policy: False)
    with pytest.raises(InvariantViolation, match="lost"):
        explore_small(tmp_path)


def test_the_explorer_catches_durable_zeros_taken_for_durable_records(tmp_path, monkeypatch):
    """The zeros were fsynced, the records written over them were not: counting them durable loses them."""
    use_zeros(monkeypatch, "short")
    prealloc = SegmentLog._preallocate

    def eager(self, new_end):
        prealloc(self, new_end)
        self.durable = max(self.durable, Position(self.active_id, new_end))

    monkeypatch.setattr(SegmentLog, "_preallocate", eager)
    with pytest.raises(InvariantViolation, match="lost"):
        explore_small(tmp_path)


def test_the_explorer_catches_a_seal_that_leaves_the_zeros(tmp_path, monkeypatch):
    """A sealed segment must end with its seal: zeros after it make it unreadable as sealed
    (recovery refuses an earlier segment like that, and cuts them off the last one)."""
    prealloc = SegmentLog._preallocate

    def forgetful(self, new_end):
        prealloc(self, new_end)
        self._has_zeros = False

    monkeypatch.setattr(SegmentLog, "_preallocate", forgetful)
    with pytest.raises(InvariantViolation, match="CorruptionError|bytes truncated"):
        explore_small(tmp_path)


def test_the_explorer_catches_a_recovery_that_trusts_the_file_size(tmp_path, monkeypatch):
    """Zeros are the end of the records, not more records: resuming at the file size leaves a hole."""
    scan = nori_wal.recovery.scan_segment

    def trusting(handle, size, limit):
        res = scan(handle, size, limit)
        return res._replace(valid_end=size, stop=Stop.END) if res.stop is Stop.ZEROED else res

    monkeypatch.setattr(nori_wal.recovery, "scan_segment", trusting)
    with pytest.raises(InvariantViolation, match="CorruptionError"):  # the reader finds no record there
        explore_small(tmp_path)


# -- what recovery and verify report about these states ----------------------------------------


def torn_over_zeros(tmp_path, tear):
    """A log whose last record (unsynced, over durable zeros) was torn ``tear`` bytes in by a power loss."""
    cfg = workload_config(str(tmp_path), "always")
    fs = PreallocFaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    wal.append(Record.put(b"kept", b"k" * 100))
    fs.inject("sync", CRASH)  # the process dies in the next record's fsync
    with pytest.raises(SimulatedCrash):
        wal.append(Record.put(b"torn", b"t" * 200))
    ((_, off, data),) = fs.pending_ops()
    post = fs.crash(CrashSpec(keep_ops=0, torn=tear if tear > 0 else len(data) + tear))
    return cfg, post, off


TEARS = [
    pytest.param(3, id="in-the-header"),
    pytest.param(100, id="in-the-payload"),
    pytest.param(-1, id="all-but-one-byte"),
]


@pytest.mark.parametrize("tear", TEARS)
def test_a_record_torn_into_zeros_is_cut_off(tmp_path, tear):
    cfg, post, off = torn_over_zeros(tmp_path, tear)
    wal, info = Wal.open(cfg, layer=post)
    with wal:
        assert len(post.files()[f"{cfg.dir}/000000.wal"]) == off  # the torn record and the zeros are cut
        with wal.read_from(Position(0, 0)) as r:
            assert [bytes(rec.key) for rec, _ in r] == [b"kept"]
    assert info.valid_records == 1 and info.bytes_truncated > 0


@pytest.mark.parametrize("tear", TEARS)
def test_a_record_torn_into_zeros_is_not_reported_as_corruption(tmp_path, tear):
    cfg, post, _ = torn_over_zeros(tmp_path, tear)
    wal, info = Wal.open(cfg, layer=post)
    wal.close()
    assert info.bytes_truncated > 0 and not info.corruption_detected


def test_verify_calls_a_record_torn_into_zeros_a_warning(tmp_path):
    cfg, post, _ = torn_over_zeros(tmp_path, 100)
    report = inspect_log(cfg.dir, layer=post)
    assert report.problems and report.ok, [str(p) for p in report.problems]


def sealed_over_zeros(tmp_path):
    """A log whose close wrote the seal over the zeros and died before cutting them (the kernel kept the seal)."""
    cfg = workload_config(str(tmp_path), "always")
    fs = PreallocFaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    for i in range(5):
        wal.append(Record.put(b"k%d" % i, b"v" * 60))
    fs.inject("truncate", CRASH)
    with pytest.raises(SimulatedCrash):
        wal.close()
    return cfg, fs.process_crash()


def test_a_seal_over_zeros_not_yet_cut_recovers_as_sealed(tmp_path):
    cfg, post = sealed_over_zeros(tmp_path)
    size = len(post.files()[f"{cfg.dir}/000000.wal"])
    wal, info = Wal.open(cfg, layer=post)
    with wal:
        with wal.read_from(Position(0, 0)) as r:
            assert len(list(r)) == 5
        assert wal.append(Record.put(b"next", b"")).segment_id == 1  # sealed: the next append rolls
    assert info.bytes_truncated > 0 and info.bytes_truncated < size and not info.corruption_detected


def test_verify_calls_zeros_after_the_last_seal_a_warning(tmp_path):
    cfg, post = sealed_over_zeros(tmp_path)
    report = inspect_log(cfg.dir, layer=post)
    assert report.ok, [str(p) for p in report.problems]


def test_no_crash_state_of_the_preallocated_path_reads_as_corruption(tmp_path):
    run = run_workload(
        "prealloc/report", workload_config(str(tmp_path), "always"), WORKLOADS["batches"], seed=7, layer=PreallocFaultFS
    )
    seen, flagged = set(), []
    for m in run.moments:
        for state in crash_variants(m):
            post = m.fs.crash(state.spec)
            image = post.image()
            # (before its parent's fsync a new log directory itself can be lost)
            if image in seen or not post.exists(run.config.dir) or not segment_ids(post.listdir(run.config.dir)):
                continue
            seen.add(image)
            fatal = [str(p) for p in inspect_log(run.config.dir, layer=post).problems if p.fatal]
            wal, info = Wal.open(run.config, layer=post)
            wal.close()
            if fatal or info.corruption_detected:
                flagged.append(f"{state.describe()}: recovery {info.corruption_detected}, verify {fatal}")
    assert len(seen) > 100 and not flagged, f"{len(flagged)} of {len(seen)} images, e.g. {flagged[:3]}"


def test_enospc_while_preallocating_stops_the_log_and_loses_nothing(tmp_path):
    """The zeros are where a full disk shows first: fail-stop, and what was acknowledged survives."""
    cfg = workload_config(str(tmp_path), "always")
    fs = PreallocFaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    acked = [wal.append(Record.put(b"k%d" % i, b"v" * 200)) for i in range(30)]  # rolls: new zeros each time
    fs.inject("preallocate", errno.ENOSPC, partial=100)
    with pytest.raises(Exception) as e:
        for i in range(30, 60):
            acked.append(wal.append(Record.put(b"k%d" % i, b"v" * 200)))
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    wal.close()
    for post in (fs.crash(), fs.process_crash()):
        wal2, _ = Wal.open(cfg, layer=post)
        with wal2, wal2.read_from(Position(0, 0)) as r:
            assert [p for _, p in r] == acked
