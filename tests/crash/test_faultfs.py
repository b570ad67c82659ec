"""FaultFS itself: what survives each kind of crash, how faults fire, and that it behaves like the OS layer."""

import errno
import os

import pytest

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig, WalLockedError
from nori_wal.fs import OsFileLayer
from nori_wal.testing import (
    CRASH,
    POWER_LOSS,
    PROCESS_CRASH,
    CrashSpec,
    FaultFS,
    SimulatedCrash,
    sector_tears,
    torn_write_points,
)

D = "/wal"


def fresh(fs=None):
    """A layer holding the directory D, durably (its entry in / is fsynced)."""
    fs = FaultFS() if fs is None else fs
    fs.makedirs(D)
    fs.sync_dir("/")
    return fs


def durable_file(fs, name, data):
    f = fs.create(f"{D}/{name}")
    f.append(data)
    f.sync()
    fs.sync_dir(D)
    return f


# -- file data ---------------------------------------------------------------------------------


def test_power_loss_keeps_only_synced_bytes():
    fs = fresh()
    f = durable_file(fs, "a", b"hello ")
    f.append(b"world")
    assert fs.files()[f"{D}/a"] == b"hello world"
    assert fs.crash().files()[f"{D}/a"] == b"hello "
    assert fs.process_crash().files()[f"{D}/a"] == b"hello world"
    f.sync()
    assert fs.crash().files()[f"{D}/a"] == b"hello world"


def test_crash_leaves_the_original_untouched_and_is_independent():
    fs = fresh()
    f = durable_file(fs, "a", b"x")
    f.append(b"y")
    post = fs.crash()
    post.open_append(f"{D}/a").append(b"z")
    assert fs.files()[f"{D}/a"] == b"xy"
    assert post.files()[f"{D}/a"] == b"xz"


def three_unsynced_writes():
    """A durable file "H" with "one", "two", "three" appended and not synced; its contents after a crash(**spec)."""
    fs = fresh()
    f = durable_file(fs, "a", b"H")
    f.append(b"one")
    f.append(b"two")
    f.append(b"three")
    assert fs.pending_ops() == [("w", 1, b"one"), ("w", 4, b"two"), ("w", 7, b"three")]
    return lambda **kw: fs.crash(CrashSpec(**kw)).files()[f"{D}/a"]


def test_keep_prefix_tear_and_zero_fill():
    crash = three_unsynced_writes()
    assert crash(keep_ops=1) == b"Hone"
    assert crash(keep_ops=2, torn=2) == b"Honetwoth"
    assert crash(keep_ops=2, torn=2, zero_fill=True) == b"Honetwoth\0\0\0"
    assert crash(keep_ops=1, zero_fill=True) == b"Hone" + bytes(8)
    assert crash(keep_ops=0, torn=0, zero_fill=True) == b"H" + bytes(11)
    assert crash(keep_ops=None) == b"Honetwothree"


def test_dropped_writes_leave_a_hole_when_later_ones_land():
    crash = three_unsynced_writes()
    assert crash(keep_ops=None, drop=(1,)) == b"Hone\0\0\0three"  # the size reached the disk, "two" did not
    assert crash(keep_ops=None, drop=(0, 1)) == b"H" + bytes(6) + b"three"
    assert crash(keep_ops=2, drop=(1,)) == b"Hone"  # nothing later landed: no hole
    assert crash(keep_ops=None, drop=(2,)) == b"Honetwo"


def test_truncate_is_pending_until_synced():
    fs = fresh()
    f = durable_file(fs, "a", b"abcdef")
    f.truncate(2)
    assert fs.files()[f"{D}/a"] == b"ab"
    assert fs.crash().files()[f"{D}/a"] == b"abcdef"
    f.sync()
    assert fs.crash().files()[f"{D}/a"] == b"ab"


# -- directories ---------------------------------------------------------------------------------


def test_created_file_without_dir_fsync_disappears_even_if_its_data_was_synced():
    fs = fresh()
    f = fs.create(f"{D}/new")
    f.append(b"data")
    f.sync()
    assert fs.crash().listdir(D) == []
    assert fs.crash(CrashSpec(keep_dir_ops=1)).files() == {f"{D}/new": b"data"}
    fs.sync_dir(D)
    assert fs.crash().files() == {f"{D}/new": b"data"}


def test_a_new_directory_vanishes_with_its_files_until_its_parent_is_fsynced():
    """mkdir's entry lives in the parent: fsyncing the new directory itself does not make it durable."""
    fs = FaultFS()
    fs.makedirs("/a/b")
    assert fs.pending_dir_ops() == [("/", ("mkdir", "a")), ("/a", ("mkdir", "b"))]
    f = fs.create("/a/b/f")
    f.append(b"data")
    f.sync()
    fs.sync_dir("/a/b")
    assert fs.files() == {"/a/b/f": b"data"}
    assert not fs.crash().exists("/a")
    assert fs.crash(CrashSpec(keep_dir_ops=1)).exists("/a") and not fs.crash(CrashSpec(keep_dir_ops=1)).exists("/a/b")
    fs.sync_dir("/a")
    assert not fs.crash().exists("/a")  # /a's own entry in / is still pending
    killed = fs.process_crash()  # the page cache keeps it, a later power loss does not
    assert killed.files() == {"/a/b/f": b"data"} and not killed.crash().exists("/a")
    fs.sync_dir("/")
    assert fs.pending_dir_ops() == [] and fs.crash().files() == {"/a/b/f": b"data"}
    fs.makedirs("/a/b")  # already there: nothing new, nothing pending
    assert fs.pending_dir_ops() == []
    with pytest.raises(FileExistsError):
        fs.makedirs("/a/b/f")
    with pytest.raises(NotADirectoryError):
        fs.makedirs("/a/b/f/g")


def test_rename_and_unlink_revert_without_dir_fsync():
    fs = fresh()
    durable_file(fs, "tmp", b"seg")
    durable_file(fs, "old", b"gone")
    fs.rename(f"{D}/tmp", f"{D}/final")
    fs.unlink(f"{D}/old")
    assert sorted(fs.listdir(D)) == ["final"]
    assert sorted(fs.crash().listdir(D)) == ["old", "tmp"]
    # Journalled in order: link final, unlink tmp, unlink old.
    assert sorted(fs.crash(CrashSpec(keep_dir_ops=1)).listdir(D)) == ["final", "old", "tmp"]
    assert sorted(fs.crash(CrashSpec(keep_dir_ops=2)).listdir(D)) == ["final", "old"]
    assert sorted(fs.process_crash().listdir(D)) == ["final"]
    fs.sync_dir(D)
    assert sorted(fs.crash().listdir(D)) == ["final"]


def test_an_open_handle_survives_unlink_like_posix():
    fs = fresh()
    durable_file(fs, "a", b"kept")
    r = fs.open_read(f"{D}/a")
    fs.unlink(f"{D}/a")
    assert r.pread(10, 0) == b"kept"
    with pytest.raises(FileNotFoundError):
        fs.open_read(f"{D}/a")


# -- faults --------------------------------------------------------------------------------------


def test_eio_on_sync_drops_the_dirty_data_like_linux():
    fs = fresh()
    f = durable_file(fs, "a", b"ok")
    f.append(b"lost")
    fs.inject("sync", errno.EIO)
    with pytest.raises(OSError) as e:
        f.sync()
    assert e.value.errno == errno.EIO
    f.sync()  # the retry "succeeds"...
    assert fs.files()[f"{D}/a"] == b"oklost"
    assert fs.crash().files()[f"{D}/a"] == b"ok"  # ...without the data (fsyncgate)


def test_enospc_after_a_partial_write():
    fs = fresh()
    f = durable_file(fs, "a", b"")
    fs.inject("append", errno.ENOSPC, partial=3)
    with pytest.raises(OSError) as e:
        f.append(b"abcdef")
    assert e.value.errno == errno.ENOSPC
    assert fs.files()[f"{D}/a"] == b"abc"
    f.append(b"g")
    assert fs.files()[f"{D}/a"] == b"abcg"


def test_nth_times_and_path_filters():
    fs = fresh()
    a, b = durable_file(fs, "a", b""), durable_file(fs, "b", b"")
    fault = fs.inject("append", errno.EIO, nth=2, times=2, path="/b")
    a.append(b"1"), a.append(b"2"), b.append(b"1")
    for _ in range(2):
        with pytest.raises(OSError):
            b.append(b"x")
    b.append(b"3")
    assert fault.fired == 2 and fs.files()[f"{D}/b"] == b"13"


def test_crash_after_k_syscalls_kills_everything_after():
    fs = fresh()
    f = durable_file(fs, "a", b"")
    k = fs.syscalls
    fs.crash_after(k + 1)
    f.append(b"survives")
    with pytest.raises(SimulatedCrash):
        f.sync()
    with pytest.raises(SimulatedCrash):
        fs.listdir(D)
    assert fs.dead and fs.syscalls == k + 2
    assert fs.crash().files()[f"{D}/a"] == b""
    assert fs.process_crash().files()[f"{D}/a"] == b"survives"


def test_named_crash_point_on_the_nth_rename():
    fs = fresh()
    cfg = WalConfig(dir=D, max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    fs.inject("rename", CRASH, nth=2)  # the first roll after the initial segment
    wal, _ = Wal.open(cfg, layer=fs)
    acked = []
    with pytest.raises(SimulatedCrash):
        for i in range(100):
            wal.append(Record.put(b"k%d" % i, b"v" * 200))
            acked.append(i)
    assert not any(n.endswith(".wal.tmp") for n in fs.crash().listdir(D))  # its directory was not fsynced
    assert any(n.endswith(".wal.tmp") for n in fs.process_crash().listdir(D))
    for post in (fs.crash(), fs.process_crash()):
        wal2, _ = Wal.open(cfg, layer=post)
        with wal2, wal2.read_from(Position(0, 0)) as r:
            assert [rec.key for rec, _ in r] == [b"k%d" % i for i in acked]
        assert not any(n.endswith(".wal.tmp") for n in post.listdir(D))


def test_the_lock_is_exclusive_and_gone_after_a_crash():
    fs = fresh()
    lock = fs.lock_dir(D)
    with pytest.raises(WalLockedError):
        fs.lock_dir(D)
    fs.crash().lock_dir(D).release()
    lock.release()
    fs.lock_dir(D).release()


def test_trace_and_observer_count_every_syscall():
    fs = fresh()
    seen = []
    fs.observe(lambda layer, call: seen.append(call.op))
    trace = fs.start_trace()
    durable_file(fs, "a", b"x")
    assert seen == ["create", "append", "sync", "sync_dir"] == [c.op for c in trace]
    assert [c.n for c in trace] == list(range(fs.syscalls - 3, fs.syscalls + 1))


def test_tear_point_helpers():
    assert sector_tears(0, 1500) == [512, 1024]
    assert sector_tears(500, 1100) == [12, 524, 1036]
    pts = torn_write_points(100, bytes(1000), frame_ends=[300, 1000])
    assert 1 in pts and 299 in pts and 301 in pts and 412 in pts and all(0 < p < 1000 for p in pts)


# -- the same behaviour as the OS layer (okaywal runs its core tests on both) --------------------


@pytest.fixture(params=["os", "fault"])
def layer_and_dir(request, tmp_path):
    return make_layer(request.param, tmp_path)


def make_layer(kind, tmp_path):
    """The OS layer, or a FaultFS (preallocating for "fault-prealloc") holding ``tmp_path``."""
    if kind == "os":
        return OsFileLayer(), str(tmp_path)
    fs = FaultFS(preallocate=kind == "fault-prealloc")
    fs.makedirs(str(tmp_path))
    return fs, str(tmp_path)


def test_file_layer_conformance(layer_and_dir):
    layer, d = layer_and_dir
    p = os.path.join(d, "f")
    f = layer.create(p)
    with pytest.raises(FileExistsError):
        layer.create(p)
    f.append(b"abc")
    f.append(memoryview(b"defg"))
    f.sync()
    with pytest.raises(OSError):
        f.pread(1, 0)  # create() opens write-only
    f.close()
    f = layer.open_append(p)
    assert f.size() == 7 and f.pread(3, 2) == b"cde" and f.pread(10, 5) == b"fg" and f.pread(4, 9) == b""
    f.truncate(4)
    f.append(b"Z")
    assert f.pread(100, 0) == b"abcdZ"
    f.close()
    r = layer.open_read(p)
    with pytest.raises(OSError):
        r.append(b"nope")
    r.close()
    layer.rename(p, p + "2")
    assert layer.exists(p + "2") and not layer.exists(p)
    assert sorted(n for n in layer.listdir(d) if not n.startswith("LOCK")) == ["f2"]
    layer.sync_dir(d)
    with pytest.raises(FileNotFoundError):
        layer.open_append(p)
    with pytest.raises(FileNotFoundError):
        layer.unlink(p)
    layer.unlink(p + "2")
    lock = layer.lock_dir(d)
    with pytest.raises(WalLockedError):
        layer.lock_dir(d)
    lock.release()
    layer.makedirs(os.path.join(d, "sub", "dir"))
    assert "sub" in layer.listdir(d)


def test_the_wal_runs_unchanged_on_both_layers(layer_and_dir):
    layer, d = layer_and_dir
    cfg = WalConfig(dir=os.path.join(d, "w"), max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    recs = [Record.put(b"k%d" % i, b"v" * (i * 7 % 300)) for i in range(60)]
    with Wal.open(cfg, layer=layer)[0] as wal:
        pos = [wal.append(r) for r in recs[:30]] + wal.append_batch(recs[30:])
        assert wal.delete_segments_before(pos[-1]) >= 1
    wal, info = Wal.open(cfg, layer=layer)
    with wal, wal.read_from(Position(0, 0)) as r:
        got = list(r)
    assert info.bytes_truncated == 0
    assert got == list(zip(recs, pos))[len(recs) - len(got) :] and len(got) >= 10


def test_power_loss_and_process_crash_specs_are_the_documented_defaults():
    assert POWER_LOSS == CrashSpec()
    assert PROCESS_CRASH.keep_ops is None and PROCESS_CRASH.keep_dir_ops is None and PROCESS_CRASH.keep_other_files
    assert PROCESS_CRASH.page_cache


def test_a_process_crash_leaves_its_unsynced_writes_in_the_page_cache():
    """SIGKILL: the next process reads everything, but a later power loss still loses what nobody synced."""
    fs = fresh()
    durable_file(fs, "a", b"synced")
    f = fs.open_append(f"{D}/a")
    f.append(b"+cached")
    fs.create(f"{D}/b").append(b"new file")
    killed = fs.process_crash()
    assert killed.files() == {f"{D}/a": b"synced+cached", f"{D}/b": b"new file"}
    assert killed.crash().files() == {f"{D}/a": b"synced"}
    torn = fs.crash(
        CrashSpec(keep_ops=0, torn=3, file=f"{D}/a", keep_dir_ops=None, keep_other_files=True, page_cache=True)
    )
    assert torn.files()[f"{D}/a"] == b"synced+ca" and torn.crash().files()[f"{D}/a"] == b"synced"


@pytest.mark.parametrize("policy", [FsyncPolicy.os(), FsyncPolicy.always()])
def test_recovery_makes_what_it_trusts_durable(policy):
    """A writer killed before its fsync (or under Os, which never fsyncs a record) left records and
    a seal in the page cache; recovery trusts them, so it fsyncs them: a power loss after the
    restart must not take back records the restarted writer went on from (or a seal it believed)."""
    fs = FaultFS(preallocate=True)
    cfg = WalConfig(dir=D, max_segment_size=4096, fsync_policy=policy)
    wal, _ = Wal.open(cfg, layer=fs)
    pos = [wal.append(Record.put(b"k%d" % i, b"v" * 100)) for i in range(5)]
    fs.inject("sync", CRASH, times=None)  # killed at its next fsync: the close's seal stays unsynced
    with pytest.raises(SimulatedCrash):
        wal.close()
    killed = fs.process_crash()
    wal, info = Wal.open(cfg, layer=killed)
    more = wal.append(Record.put(b"after", b"restart"))  # Always: acknowledged after an fsync
    got = [(bytes(r.key), p) for r, p in wal.read_from(Position(0, 0))]
    assert got[:5] == [(b"k%d" % i, p) for i, p in enumerate(pos)] and got[5] == (b"after", more)
    power_loss = killed.crash()
    wal2, _ = Wal.open(cfg, layer=power_loss)
    kept = got if policy.kind == "always" else got[:5]  # Os: the new append was never fsynced
    with wal2:
        assert [(bytes(r.key), p) for r, p in wal2.read_from(Position(0, 0))] == kept


# -- preallocation (opt-in): durable zeros ahead of the write point, as OsFile.preallocate --------


def test_preallocation_is_opt_in_and_survives_snapshots_and_crashes():
    from nori_wal.testing.faultfs import PreallocFaultFS

    assert not hasattr(durable_file(fresh(), "a", b""), "preallocate")
    for fs in (FaultFS(preallocate=True), PreallocFaultFS()):
        fresh(fs)
        f = durable_file(fs, "a", b"")
        assert hasattr(f, "preallocate")
        for later in (fs.snapshot(), fs.crash(), fs.process_crash(), fs.snapshot().crash()):
            assert hasattr(later.open_append(f"{D}/a"), "preallocate")
    off = PreallocFaultFS(preallocate=False)
    fresh(off)
    assert not hasattr(off.snapshot().create(f"{D}/b"), "preallocate")


def test_preallocated_zeros_are_durable_and_appends_overwrite_them():
    fs = fresh(FaultFS(preallocate=True))
    f = durable_file(fs, "a", b"HEAD")
    trace = fs.start_trace()
    f.preallocate(16)
    assert [(c.op, c.nbytes) for c in trace] == [("preallocate", 12), ("sync", 0)]  # pwrite zeros, fdatasync
    assert fs.crash().files()[f"{D}/a"] == b"HEAD" + bytes(12)
    f.append(b"rec1")  # at the write point, not at the end of the file
    f.append(b"rec2")
    assert fs.files()[f"{D}/a"] == b"HEADrec1rec2" + bytes(4)
    assert fs.pending_ops() == [("w", 4, b"rec1"), ("w", 8, b"rec2")]
    crash = lambda spec: fs.crash(spec).files()[f"{D}/a"]
    assert crash(POWER_LOSS) == b"HEAD" + bytes(12)  # lost: the durable zeros read back
    assert crash(CrashSpec(keep_ops=1)) == b"HEADrec1" + bytes(8)
    assert crash(CrashSpec(keep_ops=1, torn=3)) == b"HEADrec1rec" + bytes(5)  # torn into the zeros
    assert crash(CrashSpec(keep_ops=0, zero_fill=True)) == b"HEAD" + bytes(12)
    assert crash(PROCESS_CRASH) == b"HEADrec1rec2" + bytes(4)
    f.preallocate(10)  # already that long: nothing written, no fsync
    assert [c.op for c in trace[2:]] == ["append", "append", "preallocate"]
    assert fs.pending_ops() == [("w", 4, b"rec1"), ("w", 8, b"rec2")]
    f.append(b"longer-than-the-zeros")  # runs past the zeros: overwrites, then extends
    assert fs.files()[f"{D}/a"] == b"HEADrec1rec2longer-than-the-zeros"
    assert crash(CrashSpec(keep_ops=2, torn=6)) == b"HEADrec1rec2longer"


def test_preallocate_makes_earlier_writes_durable_too():
    fs = fresh(FaultFS(preallocate=True))
    f = durable_file(fs, "a", b"H")
    f.append(b"unsynced")
    f.preallocate(20)  # one fdatasync for the file: everything so far
    assert fs.crash().files()[f"{D}/a"] == b"Hunsynced" + bytes(11)


def test_truncate_pulls_the_write_point_back_and_reopen_starts_at_the_size():
    fs = fresh(FaultFS(preallocate=True))
    f = durable_file(fs, "a", b"HEAD")
    f.preallocate(12)
    f.append(b"seal")
    f.truncate(8)  # a seal cuts the zeros after it
    assert fs.files()[f"{D}/a"] == b"HEADseal"
    assert fs.crash(CrashSpec(keep_ops=1)).files()[f"{D}/a"] == b"HEADseal" + bytes(4)  # the cut not yet durable
    f.truncate(6)
    f.append(b"AL")
    assert fs.files()[f"{D}/a"] == b"HEADseAL"
    f.truncate(10)  # growing the file leaves the write point alone
    f.append(b"!")
    assert fs.files()[f"{D}/a"] == b"HEADseAL!\0"
    f.sync()
    g = fs.open_append(f"{D}/a")
    g.append(b"+")
    assert fs.files()[f"{D}/a"] == b"HEADseAL!\0+"


def test_preallocate_faults():
    fs = fresh(FaultFS(preallocate=True))
    f = durable_file(fs, "a", b"H")
    fs.inject("preallocate", errno.ENOSPC, partial=3)
    with pytest.raises(OSError) as e:
        f.preallocate(100)
    assert e.value.errno == errno.ENOSPC and fs.files()[f"{D}/a"] == b"H" + bytes(3)
    fs.inject("sync", errno.EIO)  # the fdatasync after the zeros
    with pytest.raises(OSError) as e:
        f.preallocate(100)
    assert e.value.errno == errno.EIO and len(fs.files()[f"{D}/a"]) == 100
    assert fs.crash().files()[f"{D}/a"] == b"H"  # fsyncgate: the dirty zeros were dropped
    fs.inject("preallocate", CRASH)
    with pytest.raises(SimulatedCrash):
        f.preallocate(200)


@pytest.fixture(params=["os", "fault-prealloc"])
def prealloc_layer_and_dir(request, tmp_path):
    return make_layer(request.param, tmp_path)


def test_preallocate_conformance(prealloc_layer_and_dir):
    layer, d = prealloc_layer_and_dir
    p = os.path.join(d, "f")
    f = layer.create(p)
    f.append(b"abc")
    f.preallocate(10)
    assert f.size() == 10
    f.append(b"de")
    f.preallocate(8)
    f.truncate(12)
    assert f.size() == 12
    f.append(b"f")
    f.sync()
    f.close()
    f = layer.open_append(p)
    assert f.pread(100, 0) == b"abcdef" + bytes(6)
    f.append(b"g")
    f.truncate(5)
    f.append(b"h")
    assert f.pread(100, 0) == b"abcdeh" and f.size() == 6
    f.close()


def test_the_wal_keeps_preallocated_zeros_on_both_layers(prealloc_layer_and_dir):
    """SegmentLog preallocates on FaultFS(preallocate=True) as it does on the OS, and seals cut the zeros."""
    layer, d = prealloc_layer_and_dir
    cfg = WalConfig(dir=os.path.join(d, "w"), max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    seg = os.path.join(cfg.dir, "000000.wal")
    wal, _ = Wal.open(cfg, layer=layer)
    with wal:
        end = [wal.append(Record.put(b"k%d" % i, b"v" * 50)) for i in range(3)][-1]
        h = layer.open_read(seg)
        try:
            assert h.size() > end.offset + 50 and not any(h.pread(4096, end.offset + 100))  # zeros ahead
        finally:
            h.close()
    h = layer.open_read(seg)
    try:
        size = h.size()
    finally:
        h.close()
    wal, info = Wal.open(cfg, layer=layer)
    with wal, wal.read_from(Position(0, 0)) as r:
        assert len(list(r)) == 3
    assert size < end.offset + 100 and info.bytes_truncated == 0  # the seal cut them
