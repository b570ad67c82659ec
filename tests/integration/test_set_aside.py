"""Recovery Rule 8: what opening the log takes out while it reports corruption is set aside, never destroyed.

A damaged record in the last segment makes recovery cut it and everything
after it; a damaged header takes the whole last segment out. Those bytes may
hold acknowledged records (a media error, not a crash), so they are first
copied (or renamed) to ``NNNNNN.wal.OFFSET.broken``, durably, as etcd keeps a
``.broken`` copy. A crash's ordinary tail is not kept.
"""

import os

import pytest
from writer_support import keys_in, run_cli

from nori_wal import FsyncPolicy, Record, Wal, WalConfig
from nori_wal.segment import segment_name, set_aside_name

SEG = 16 * 1024


def config(d):
    return WalConfig(dir=str(d), max_segment_size=SEG, fsync_policy=FsyncPolicy.os())


def make_log(d, n=30):
    """Records in several segments, closed cleanly (tests unseal the last one, as a crash leaves it);
    (records, their positions, the end position)."""
    recs = [Record.put(b"k%03d" % i, bytes([i]) * (40 + 90 * i)) for i in range(n)]
    wal, _ = Wal.open(config(d))
    pos = wal.append_batch(recs[: n // 2]) + [wal.append(r) for r in recs[n // 2 :]]
    end = wal.current_position()
    wal.close()
    return recs, pos, end


def unseal(path, end):
    with open(path, "r+b") as f:  # the close-time seal goes, as after a crash
        f.truncate(end)


def poke(path, at, data):
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def set_aside_files_in(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".broken"))


def test_a_damaged_record_and_all_after_it_are_set_aside_before_the_cut(tmp_path):
    recs, pos, end = make_log(tmp_path)
    path = tmp_path / segment_name(end.segment_id)
    unseal(path, end.offset)
    hit = next(i for i, p in enumerate(pos) if p.segment_id == end.segment_id) + 1
    poke(path, pos[hit].offset + 30, b"\xff\xfe")  # in the value: a checksum failure
    damaged = path.read_bytes()
    wal, info = Wal.open(config(tmp_path))
    wal.close()
    name = set_aside_name(end.segment_id, pos[hit].offset)
    assert info.corruption_detected and info.set_aside == (name,)
    assert (tmp_path / name).read_bytes() == damaged[pos[hit].offset :]  # every byte the cut took
    assert path.read_bytes().startswith(damaged[: pos[hit].offset])  # (then the seal close wrote)
    assert keys_in(tmp_path) == [r.key for r in recs[:hit]]
    wal, again = Wal.open(config(tmp_path))  # the next open is clean and leaves the file alone
    wal.close()
    assert again.set_aside == () and not again.corruption_detected
    assert (tmp_path / name).read_bytes() == damaged[pos[hit].offset :]
    verify = run_cli("verify", str(tmp_path))
    assert verify.returncode == 0 and f"set aside in {name}" in verify.stdout, verify


def test_a_last_segment_with_a_damaged_header_is_set_aside_whole(tmp_path):
    recs, pos, end = make_log(tmp_path)
    last = end.segment_id
    path = tmp_path / segment_name(last)
    poke(path, 3, b"\xff")
    damaged = path.read_bytes()
    wal, info = Wal.open(config(tmp_path))
    new = wal.append(Record.put(b"new", b"segment"))
    wal.close()
    assert info.corruption_detected and info.set_aside == (set_aside_name(last, 0),)
    assert (tmp_path / set_aside_name(last, 0)).read_bytes() == damaged and not path.exists()
    assert new.segment_id == last + 1
    assert keys_in(tmp_path) == [r.key for r, p in zip(recs, pos) if p.segment_id < last] + [b"new"]


def test_a_set_aside_segment_id_is_never_reused(tmp_path):
    """A crash after the damaged segment was set aside, before the next one was created: its id stays used."""
    _recs, _pos, end = make_log(tmp_path)
    last = end.segment_id
    os.rename(tmp_path / segment_name(last), tmp_path / set_aside_name(last, 0))
    wal, info = Wal.open(config(tmp_path))
    new = wal.append(Record.put(b"after", b"crash"))
    wal.close()
    assert new.segment_id == last + 1, new  # not `last`: positions in the set-aside file keep meaning
    assert info.set_aside == ()


@pytest.mark.parametrize("tail", ["torn", "zeros", "torn into zeros"])
def test_a_crash_tail_is_cut_without_keeping_it(tmp_path, tail):
    recs, pos, end = make_log(tmp_path)
    path = tmp_path / segment_name(end.segment_id)
    unseal(path, end.offset)
    os.unlink(tmp_path / "DURABLE")  # the crash came before a mark covered the tail (else: Rule 7's loss)
    if tail == "torn":
        unseal(path, end.offset - 7)
    elif tail == "zeros":
        with open(path, "ab") as f:
            f.write(bytes(4096))
    else:
        poke(path, pos[-1].offset + 8, bytes(end.offset - pos[-1].offset - 8))
    wal, info = Wal.open(config(tmp_path))
    wal.close()
    assert info.bytes_truncated > 0 and not info.corruption_detected
    assert info.set_aside == () and set_aside_files_in(tmp_path) == []


@pytest.mark.timeout(120)
def test_a_writer_process_reports_what_its_recovery_set_aside(tmp_path, spawn_writer):
    """The writer process runs the same recovery; its spawn returns the names (a tuple, as embedded)."""
    _recs, pos, end = make_log(tmp_path)
    path = tmp_path / segment_name(end.segment_id)
    unseal(path, end.offset)
    hit = next(i for i, p in enumerate(pos) if p.segment_id == end.segment_id) + 1
    poke(path, pos[hit].offset + 30, b"\xff")
    writer = spawn_writer(config(tmp_path))
    name = set_aside_name(end.segment_id, pos[hit].offset)
    assert writer.recovery_info.corruption_detected and writer.recovery_info.set_aside == (name,)
    assert (tmp_path / name).exists()


def test_bytes_cut_twice_at_one_place_are_both_kept(tmp_path):
    """Damage cut at offset X, new records appended from X, damage at X again: the first file stays."""
    _recs, pos, end = make_log(tmp_path)
    path = tmp_path / segment_name(end.segment_id)
    at = pos[-1].offset
    unseal(path, end.offset)
    kept = []
    for n in (1, 2):
        poke(path, at + 30, b"\xff")
        kept.append(path.read_bytes()[at:])
        wal, info = Wal.open(config(tmp_path))
        assert info.set_aside == (set_aside_name(end.segment_id, at, n),)
        assert wal.append(Record.put(b"again", b"z" * 200)).offset == at  # new records where the cut was
        tail = wal.current_position().offset
        wal.close()
        unseal(path, tail)
    assert [(tmp_path / set_aside_name(end.segment_id, at, n)).read_bytes() for n in (1, 2)] == kept
    assert kept[0] != kept[1]
