"""Recovery Rule 8 under crashes and I/O errors: the bytes recovery sets aside are never lost.

On FaultFS, recovery of a last segment with a damaged record (or header) is
crashed at every syscall, power loss and process crash, and then recovered
again; and each step that keeps the bytes (create, append, sync, rename,
sync_dir) fails once. The log keeps the records before the damage and one
``NNNNNN.wal.OFFSET.broken`` file holds every byte cut (integration/test_set_aside.py
shows the same rule on real files).
"""

import errno
import os

import pytest

from nori_wal import FsyncPolicy, Position, Record, Wal, WalConfig, WalIOError
from nori_wal.segment import segment_name, set_aside_name
from nori_wal.testing.faultfs import FaultFS, SimulatedCrash

SEG = 16 * 1024


def config(d):
    return WalConfig(dir=str(d), max_segment_size=SEG, fsync_policy=FsyncPolicy.os())


def make_log(d, layer, n=30):
    """Records in several segments on ``layer``, closed cleanly: (records, their positions, the end position)."""
    recs = [Record.put(b"k%03d" % i, bytes([i]) * (40 + 90 * i)) for i in range(n)]
    with Wal.open(config(d), layer=layer)[0] as wal:
        pos = wal.append_batch(recs[: n // 2]) + [wal.append(r) for r in recs[n // 2 :]]
        end = wal.current_position()
    return recs, pos, end


def fault_log(d, damage="record"):
    """A FaultFS log whose last segment has a damaged record (or header): (layer, keys kept, the bytes
    recovery must set aside, their file's name)."""
    fs = FaultFS()
    recs, pos, end = make_log(d, layer=fs)
    path = os.path.join(str(d), segment_name(end.segment_id))
    crashed = fs.process_crash()  # everything was synced by close; the seal is on disk
    damaged = bytearray(crashed.files()[path][: end.offset])
    first = next(i for i, p in enumerate(pos) if p.segment_id == end.segment_id)
    if damage == "record":
        hit = first + 1
        damaged[pos[hit].offset + 30] ^= 0xFF  # in the value: a checksum failure, not a torn length
        cut, name = bytes(damaged[pos[hit].offset :]), set_aside_name(end.segment_id, pos[hit].offset)
    else:
        hit = first
        damaged[3] ^= 0xFF
        cut, name = bytes(damaged), set_aside_name(end.segment_id, 0)
    layer = FaultFS.from_files({**crashed.files(), path: bytes(damaged)})
    return layer, [r.key for r in recs[:hit]], cut, name


def recovered(cfg, layer):
    """(the keys of the log, RecoveryInfo) after opening it on ``layer``."""
    wal, info = Wal.open(cfg, layer=layer)
    try:
        return [rec.key for rec, _ in wal.read_from(Position(0, 0))], info
    finally:
        wal.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["record", "header"])
def test_a_crash_anywhere_in_recovery_never_loses_the_set_aside_bytes(tmp_path, damage):
    """Power loss or a process crash at each syscall of the recovery that sets bytes aside, then recovery
    again: the log holds the records before the damage, and the set-aside file holds every cut byte."""
    cfg = config(tmp_path)
    layer, kept, cut, name = fault_log(tmp_path, damage)
    path = os.path.join(str(tmp_path), name)
    k = 0
    while True:
        trial = layer.snapshot()
        trial.crash_after(k)
        try:
            Wal.open(cfg, layer=trial)[0].close()
        except SimulatedCrash:
            for post in (trial.crash(), trial.process_crash()):
                keys, _info = recovered(cfg, post)
                assert keys == kept, k
                assert post.files().get(path) == cut, f"crash at syscall {k + 1} of recovery"
                assert [n for n in post.listdir(str(tmp_path)) if ".broken" in n] == [name]  # one copy, no .tmp
            k += 1
            continue
        break
    assert k > 5  # recovery did reach the set-aside steps


@pytest.mark.parametrize("op", ["create", "append", "sync", "rename", "sync_dir"])
def test_a_failure_while_setting_aside_cuts_nothing(tmp_path, op):
    """An I/O error while keeping the bytes: a WalIOError, the segment uncut; the next open sets them aside."""
    cfg = config(tmp_path)
    layer, kept, cut, name = fault_log(tmp_path)
    before = layer.files()
    fault = layer.inject(op, errno.ENOSPC, path=str(tmp_path) if op in ("create", "rename", "sync_dir") else None)
    with pytest.raises(WalIOError):
        Wal.open(cfg, layer=layer)
    assert fault.fired == 1
    layer.clear_faults()
    segments = {p: b for p, b in before.items() if p.endswith(".wal")}
    assert {p: b for p, b in layer.files().items() if p.endswith(".wal")} == segments
    keys, info = recovered(cfg, layer)
    assert keys == kept and info.set_aside == (name,)
    assert layer.files()[os.path.join(str(tmp_path), name)] == cut
