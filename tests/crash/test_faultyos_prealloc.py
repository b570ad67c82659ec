"""FaultyOsLayer takes the preallocated-zeros path the OS layer takes, and a full disk there is fail-stop.

Under Always and Batch, ``SegmentLog`` keeps durable zeros ahead of its write
point (``OsFile.preallocate``) before it writes a small group. FaultyOsLayer
(real files with fault rules: the writer fault and SIGKILL tests) passes that
call through, so those tests run the production path, and a "preallocate"
rule makes it fail. ENOSPC there is the log's ordinary fail-stop: the append
raises WalIOError (the OSError as ``__cause__``), writes nothing, every later
call raises the same error, and a reopen recovers every acknowledged record
and appends after them. Where it happens: the first write after opening a new
log, after reopening a log whose last segment was not sealed (a crash), and
the first write into a segment created by a roll.
"""

import errno
import os
import shutil

import pytest

from nori_wal import FsyncPolicy, Record, Wal, WalConfig, WalIOError
from nori_wal.fs import OS
from nori_wal.position import Position
from nori_wal.segment import segment_ids
from nori_wal.segment_log import PREALLOC_BYTES
from nori_wal.testing.faultfs import Fault
from nori_wal.testing.faultyos import FaultyOsFile, FaultyOsLayer

SEG = 16 * 1024


def config(d, policy="always", seg=SEG):
    policies = {"always": FsyncPolicy.always(), "batch": FsyncPolicy.batch(0.001), "os": FsyncPolicy.os()}
    return WalConfig(dir=str(d), max_segment_size=seg, fsync_policy=policies[policy])


def rec(i):
    return Record.put(b"k%05d" % i, b"v" * 300)


def read_back(cfg):
    wal, info = Wal.open(cfg)
    with wal, wal.read_from(Position(0, 0)) as r:
        return [(bytes(x.key), p) for x, p in r], info


def test_faultyos_files_offer_what_os_files_offer():
    assert hasattr(FaultyOsFile, "preallocate") and hasattr(FaultyOsFile, "start_writeback")


@pytest.mark.parametrize("policy,zeros", [("always", True), ("batch", True), ("os", False)])
def test_faultyos_takes_the_preallocated_path_of_the_os_layer(tmp_path, policy, zeros):
    """The active segment after one small append is the same size on both layers: zeros ahead, or none (Os)."""
    sizes = {}
    for name, layer in (("os", OS), ("faulty", FaultyOsLayer())):
        cfg = config(tmp_path / name, policy, seg=8 * 1024 * 1024)
        wal, _ = Wal.open(cfg, layer=layer)
        with wal:
            wal.append(rec(0))
            sizes[name] = os.path.getsize(tmp_path / name / "000000.wal")
    assert sizes["faulty"] == sizes["os"]
    assert (sizes["os"] > PREALLOC_BYTES) is zeros


def test_start_writeback_goes_to_the_file_and_an_error_rule_drops_it(tmp_path):
    layer = FaultyOsLayer([Fault("start_writeback", errno.EIO)])
    f = layer.create(str(tmp_path / "f"))
    try:
        f.append(b"x" * 4096)
        f.start_writeback(0, 4096)  # the rule fires: advice dropped, no error (as OsFile ignores them)
        f.start_writeback(0, 4096)  # passed through
    finally:
        f.close()
    assert layer.syscalls == 4 and layer.faults[0].fired == 1  # create, append, two start_writeback


def assert_fail_stop_on_enospc(wal, first):
    """The next append hits the armed ENOSPC: WalIOError, nothing written, sticky."""
    with pytest.raises(WalIOError, match="preallocating") as e:
        wal.append(rec(first))
    assert isinstance(e.value.__cause__, OSError) and e.value.__cause__.errno == errno.ENOSPC
    with pytest.raises(WalIOError) as again:
        wal.append(rec(first + 1))
    assert again.value is e.value  # the same error until reopened
    with pytest.raises(WalIOError):
        wal.sync()


def assert_recovers(cfg, acked):
    got, info = read_back(cfg)
    assert got == acked and not info.corruption_detected
    wal, _ = Wal.open(cfg)
    with wal:
        pos = wal.append(Record.put(b"after", b""))
    got, _ = read_back(cfg)
    assert got == acked + [(b"after", pos)]


@pytest.mark.parametrize("partial", [None, 100])
@pytest.mark.parametrize("policy", ["always", "batch"])
def test_enospc_while_preallocating_a_new_log(tmp_path, policy, partial, crash_counts):
    cfg = config(tmp_path, policy)
    layer = FaultyOsLayer([Fault("preallocate", errno.ENOSPC, path="000000.wal", partial=partial)])
    wal, _ = Wal.open(cfg, layer=layer)
    assert_fail_stop_on_enospc(wal, 0)
    wal.close()
    assert_recovers(cfg, [])
    crash_counts["fault_cases"] += 1


@pytest.mark.parametrize("partial", [None, 100])
def test_enospc_while_preallocating_after_reopening_an_unsealed_log(tmp_path, partial, crash_counts):
    """The first append after recovering a crashed log (its last segment unsealed, opened for appending)."""
    live, crashed = config(tmp_path / "live"), config(tmp_path / "crashed")
    wal, _ = Wal.open(live)
    acked = [(b"k%05d" % i, wal.append(rec(i))) for i in range(5)]
    shutil.copytree(live.dir, crashed.dir)  # what a SIGKILL leaves: no seal, zeros ahead of the records
    wal.close()
    layer = FaultyOsLayer([Fault("preallocate", errno.ENOSPC, partial=partial)])
    wal, info = Wal.open(crashed, layer=layer)
    assert info.valid_records == 5 and segment_ids(os.listdir(crashed.dir)) == [0]
    assert_fail_stop_on_enospc(wal, 5)
    wal.close()
    assert_recovers(crashed, acked)
    crash_counts["fault_cases"] += 1


@pytest.mark.parametrize("partial", [None, 100])
@pytest.mark.parametrize("policy", ["always", "batch"])
def test_enospc_while_preallocating_at_a_roll(tmp_path, policy, partial, crash_counts):
    """The first write into segment 1: the roll sealed segment 0 and created segment 1, then the zeros fail."""
    cfg = config(tmp_path, policy)
    layer = FaultyOsLayer([Fault("preallocate", errno.ENOSPC, path="000001.wal", partial=partial)])
    wal, _ = Wal.open(cfg, layer=layer)
    acked = []
    with pytest.raises(WalIOError, match="preallocating segment 1") as e:
        for i in range(200):
            acked.append((b"k%05d" % i, wal.append(rec(i))))
    assert e.value.__cause__.errno == errno.ENOSPC
    assert acked and acked[-1][1].segment_id == 0 and len(acked) < 200
    assert segment_ids(os.listdir(cfg.dir)) == [0, 1]
    assert_fail_stop_on_enospc(wal, len(acked) + 1)
    wal.close()
    assert_recovers(cfg, acked)
    crash_counts["fault_cases"] += 1
