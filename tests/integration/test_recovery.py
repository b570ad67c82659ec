"""Recovery on open: damage the last segment at many offsets; exactly the records before it come back."""

import os
import random

import pytest

from nori_wal import CorruptionError, FsyncPolicy, Position, Record, Wal, WalConfig, open_reader
from nori_wal.codec import SEAL_FRAME_SIZE
from nori_wal.segment import HEADER_SIZE, segment_name

SEG = 64 * 1024


def make_log(d, n=40, seg=SEG):
    """A log of ``n`` records of varied sizes; returns (records, their end offsets) of the last segment."""
    cfg = WalConfig(dir=d, max_segment_size=seg, fsync_policy=FsyncPolicy.os())
    rng = random.Random(n)
    recs = [Record.put(b"k%03d" % i, os.urandom(rng.randint(0, 300))) for i in range(n)]
    with Wal.open(cfg)[0] as wal:
        pos = wal.append_batch(recs)
        end = wal.current_position()
    # Crash-like state: the active segment without its close-time seal.
    path = os.path.join(d, segment_name(end.segment_id))
    with open(path, "r+b") as f:
        f.truncate(end.offset)
    return recs, pos, path


def read_all(d):
    with open_reader(d) as r:
        return [rec for rec, _ in r]


# One helper per kind of damage (etcd's table-driven corruption tests).
def truncate_to(at):
    def damage(path):
        with open(path, "r+b") as f:
            f.truncate(at)

    return damage


def zero_from(at):
    def damage(path):
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(bytes(size - at))

    return damage


def flip_byte(at):
    def damage(path):
        with open(path, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ 0x5A]))

    return damage


def append_garbage(nbytes):
    def damage(path):
        with open(path, "ab") as f:
            f.write(random.Random(nbytes).randbytes(nbytes))

    return damage


def tear_sector_after(at):
    """The last 512-byte sector write torn: bytes from ``at`` to the next sector boundary are garbage."""

    def damage(path):
        size = os.path.getsize(path)
        stop = min(size, (at // 512 + 1) * 512)
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(random.Random(at).randbytes(stop - at))

    return damage


def offsets(path, pos, step):
    seg = int(os.path.basename(path)[:6])
    starts = [p.offset for p in pos if p.segment_id == seg]
    size = os.path.getsize(path)
    return seg, starts, list(range(HEADER_SIZE, size, step))


@pytest.mark.parametrize("kind", ["truncate", "zero", "flip", "tear"])
def test_damage_at_every_offset_keeps_exactly_the_prefix(tmp_path, kind):
    base = tmp_path / "base"
    recs, pos, path = make_log(str(base), n=30, seg=1 << 20)
    seg, starts, where = offsets(path, pos, step=7)
    with open(path, "rb") as f:
        pristine = f.read()
    for at in where:
        with open(path, "wb") as f:
            f.write(pristine)
        {"truncate": truncate_to, "zero": zero_from, "flip": flip_byte, "tear": tear_sector_after}[kind](at)(path)
        wal, info = Wal.open(WalConfig(dir=str(base), fsync_policy=FsyncPolicy.os()))
        # The records wholly before the damaged byte survive; the one it hit and all after are cut.
        keep = sum(1 for s, r in zip(starts, recs) if s + len(_frame(r)) <= at)
        got = read_all(str(base))
        assert got == recs[:keep], (kind, at)
        assert info.valid_records == keep
        assert wal.current_position() == Position(seg, starts[keep] if keep < len(starts) else os.path.getsize(path))
        p = wal.append(Record.put(b"after", b"damage"))
        assert p == Position(seg, starts[keep] if keep < len(starts) else p.offset)
        wal.close()
        assert read_all(str(base)) == recs[:keep] + [Record.put(b"after", b"damage")]
        # A second open finds nothing more to repair (recovering twice is idempotent).
        wal, info = Wal.open(WalConfig(dir=str(base)))
        assert info.bytes_truncated == 0 and info.valid_records == keep + 1
        wal.close()


def _frame(rec):
    from nori_wal.codec import encode_record

    return encode_record(rec)


@pytest.mark.parametrize("nbytes", [1, 6, 7, 100, 5000])
def test_garbage_appended_to_the_tail_is_cut(tmp_path, nbytes):
    recs, pos, path = make_log(str(tmp_path), n=10)
    size = os.path.getsize(path)
    append_garbage(nbytes)(path)
    wal, info = Wal.open(WalConfig(dir=str(tmp_path)))
    assert info.bytes_truncated == nbytes and os.path.getsize(path) == size
    assert read_all(str(tmp_path)) == recs
    wal.close()


def test_zero_filled_tail_is_end_not_corruption(tmp_path):
    recs, pos, path = make_log(str(tmp_path), n=10)
    with open(path, "ab") as f:
        f.write(bytes(8192))  # ext4 after power loss (etcd #11488)
    wal, info = Wal.open(WalConfig(dir=str(tmp_path)))
    assert info.bytes_truncated == 8192 and not info.corruption_detected
    assert read_all(str(tmp_path)) == recs
    wal.close()


def test_reader_treats_a_zero_filled_tail_inside_a_frame_as_the_end(tmp_path):
    """Power loss on ext4 can leave a frame's last bytes zero up to EOF (DESIGN rule 5).

    That is a torn tail of the last segment ("not yet"), as recovery treats it;
    the reader raised CorruptionError "checksum mismatch" for it.
    """
    d = tmp_path / "wal"
    wal, _ = Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.os()))
    recs = [Record.put(b"k%d" % i, b"v" * 300) for i in range(20)]
    positions = [wal.append(r) for r in recs]
    wal.close()
    path = d / "000000.wal"
    size = os.path.getsize(path) - SEAL_FRAME_SIZE
    os.truncate(path, size)  # as if the writer had crashed: no seal
    torn = positions[-3].offset + 10  # inside the third-to-last frame
    with open(path, "r+b") as f:
        f.seek(torn)
        f.write(bytes(size - torn))
    with open_reader(d) as reader:
        got = [r for r, _ in reader]
    assert got == recs[:-3]
    wal, info = Wal.open(WalConfig(dir=d))  # recovery agrees: the same prefix
    with wal.read_from(positions[0]) as reader:
        assert [r for r, _ in reader] == recs[:-3]
    wal.close()


def test_garbage_tail_sets_corruption_detected(tmp_path):
    recs, pos, path = make_log(str(tmp_path), n=10)
    flip_byte(pos[5].offset + 9)(path)
    wal, info = Wal.open(WalConfig(dir=str(tmp_path)))
    assert info.corruption_detected and info.valid_records == 5
    wal.close()


def test_damaged_header_of_last_segment_is_removed(tmp_path):
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=300, seg=16 * 1024)
    last = pos[-1].segment_id
    assert last >= 2
    flip_byte(3)(path)  # the active segment's header
    wal, info = Wal.open(WalConfig(dir=d, max_segment_size=16 * 1024))
    survivors = [r for r, p in zip(recs, pos) if p.segment_id < last]
    assert info.valid_records == len(survivors) and info.corruption_detected
    assert read_all(d) == survivors
    p = wal.append(Record.put(b"new", b"seg"))
    assert p.segment_id == last + 1  # segment names are never reused
    wal.close()


def test_a_segment_removed_by_recovery_never_has_its_name_reused(tmp_path):
    """DESIGN rule 8: recovery peeled a last segment with a damaged header; after a reopen
    without appends the next roll created a segment under the removed segment's name."""
    d = tmp_path / "wal"
    cfg = WalConfig(dir=d, max_segment_size=4096, fsync_policy=FsyncPolicy.os())
    wal, _ = Wal.open(cfg)
    while wal.current_position().segment_id < 1:
        wal.append(Record.put(b"k", b"v" * 100))
    wal.close()
    with open(d / "000001.wal", "r+b") as f:
        f.write(b"X")  # the header of the last segment is damaged
    wal, info = Wal.open(cfg)  # removes segment 1
    assert info.corruption_detected
    wal.close()
    wal, _ = Wal.open(cfg)
    pos = wal.append(Record.put(b"a", b"b"))
    wal.close()
    assert pos.segment_id > 1, pos
    assert "000001.wal" not in os.listdir(d)


def test_corruption_inside_a_sealed_segment_is_reported_not_skipped(tmp_path):
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=300, seg=16 * 1024)
    first = os.path.join(d, segment_name(0))
    size = os.path.getsize(first)
    with open(first, "r+b") as f:  # break the seal and a record in the middle
        f.seek(size - SEAL_FRAME_SIZE + 5)
        f.write(b"\xff")
        f.seek(pos[3].offset + 8)
        f.write(b"\x00\x01")
    with pytest.raises(CorruptionError) as err:
        Wal.open(WalConfig(dir=d, max_segment_size=16 * 1024))
    assert "segment 0" in str(err.value) and err.value.segment_id == 0
    with pytest.raises(CorruptionError, match="segment 0 offset"):
        read_all(d)


@pytest.mark.parametrize("at", [0, 5, 8, 40])
def test_a_reader_names_the_offset_of_the_damaged_record(tmp_path, at):
    """Whatever record the read buffer starts with, the error points at the damaged one."""
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=300, seg=16 * 1024)
    bad = next(p for p in pos[1:] if p.segment_id == 0 and p.offset > 3000)
    with open(os.path.join(d, segment_name(0)), "r+b") as f:
        f.seek(bad.offset + at)
        f.write(bytes([f.read(1)[0] ^ 0xFF]) if at else b"\x00\x00\x00\x00")
    for start in (Position(0, 0), pos[3]):
        with open_reader(d, start) as r, pytest.raises(CorruptionError) as err:
            for _ in r:
                pass
        assert (err.value.segment_id, err.value.offset) == (0, bad.offset), str(err.value)
        assert f"offset {bad.offset}:" in str(err.value)


def test_clean_reopen_does_not_rescan_sealed_segments(tmp_path):
    d = str(tmp_path)
    cfg = WalConfig(dir=d, max_segment_size=16 * 1024)
    with Wal.open(cfg)[0] as wal:
        wal.append_batch([Record.put(b"k", b"v" * 500)] * 200)
        before = wal.current_position()
    wal, info = Wal.open(cfg)
    assert info.segments_scanned == 0 and info.bytes_truncated == 0 and info.valid_records == 200
    assert wal.current_position() == before  # unchanged by close + reopen
    assert wal.append(Record.put(b"x", b"y")) >= before
    wal.close()


def test_junk_files_in_the_directory_are_ignored(tmp_path):
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=5)
    for junk in ("notes.txt", "12.wal.bak", "abc.wal", "000001.wal.tmp"):
        (tmp_path / junk).write_bytes(b"junk")
    wal, info = Wal.open(WalConfig(dir=d))
    assert info.valid_records == 5 and read_all(d) == recs
    wal.close()
    assert not (tmp_path / "000001.wal.tmp").exists()  # a crashed roll's temp file is cleaned up


def test_reopening_with_smaller_segments_keeps_every_record(tmp_path):
    """A frame the new config could not write is still a record: recovery judges frames by the format."""
    d = str(tmp_path)
    big = WalConfig(dir=d, max_segment_size=1 << 20, fsync_policy=FsyncPolicy.always())
    wal, _ = Wal.open(big)
    acked = [Record.put(b"small1", b"a"), Record.put(b"big", os.urandom(100_000)), Record.put(b"small2", b"b")]
    for r in acked:
        wal.append(r)
    wal._log._active.close()  # a crash: no clean close, the last segment stays unsealed
    wal._log._lock.release()
    small = WalConfig(dir=d, max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always())
    wal2, info = Wal.open(small)
    assert info.valid_records == 3 and not info.corruption_detected  # (preallocated zeros are cut)
    wal2.append(Record.put(b"after", b"reopen"))
    wal2.close()
    assert read_all(d) == acked + [Record.put(b"after", b"reopen")]


def test_an_open_that_refuses_removes_nothing(tmp_path):
    """A lost middle segment and a damaged last header: the open refuses before rule 4 removes anything."""
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=600, seg=16 * 1024)
    assert pos[-1].segment_id >= 3
    os.unlink(os.path.join(d, segment_name(1)))
    flip_byte(3)(path)  # the last segment's header
    before = {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)}
    with pytest.raises(CorruptionError, match="segment 1 is missing"):
        Wal.open(WalConfig(dir=d, max_segment_size=16 * 1024))
    assert {n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)} == before


# -- damage in a sealed last segment; the durable mark ----------------------------------------------


def sealed_log(d, n=20):
    """A cleanly closed log of one segment (it ends with its seal): (records, positions, path)."""
    recs = [Record.put(b"k%02d" % i, b"v" * 200) for i in range(n)]
    with Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.always()))[0] as wal:
        pos = [wal.append(r) for r in recs]
    return recs, pos, os.path.join(d, segment_name(0))


def stretch_value_len(at):
    """One bit of a record's 2-byte value_len flipped: 200 becomes 8392, its end past the end of the file."""

    def damage(path):
        with open(path, "r+b") as f:
            f.seek(at + 6)
            b = f.read(1)[0]
            f.seek(at + 6)
            f.write(bytes([b ^ 0x40]))

    return damage


def zero_records(start, end):
    def damage(path):
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(bytes(end - start))

    return damage


@pytest.mark.parametrize("kind", ["value_len", "zeroed"])
@pytest.mark.parametrize("durable_only", [False, True])
def test_damage_inside_a_sealed_last_segment_raises_it_is_not_the_end(tmp_path, kind, durable_only):
    """A clean close sealed the last segment: bytes that are not records before its seal are damage."""
    d = str(tmp_path)
    recs, pos, path = sealed_log(d)
    {"value_len": stretch_value_len(pos[5].offset), "zeroed": zero_records(pos[5].offset, pos[7].offset)}[kind](path)
    with open_reader(d, durable_only=durable_only) as r, pytest.raises(CorruptionError) as err:
        for _ in r:
            pass
    assert (err.value.segment_id, err.value.offset) == (0, pos[5].offset)
    assert "segment 0 offset %d:" % pos[5].offset in str(err.value) and "sealed segment" in str(err.value)


def unsealed_log(d, n=20):
    """A log whose writer made ``n`` records durable and died (no seal; the durable mark at their end)."""
    recs, pos, path = sealed_log(d, n)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - SEAL_FRAME_SIZE)
    return recs, pos, path


@pytest.mark.parametrize("damage", ["value_len", "flip", "zeroed"])
def test_a_cut_below_the_durable_mark_is_corruption(tmp_path, damage):
    """The cut removes records the previous writer had made durable: not a crash's tail (recovery rule 7)."""
    from nori_wal.observe import CorruptionTruncated, RecordingMeter

    d = str(tmp_path)
    recs, pos, path = unsealed_log(d)
    end = os.path.getsize(path)
    {
        "value_len": stretch_value_len(pos[5].offset),
        "flip": flip_byte(pos[5].offset + 9),
        "zeroed": zero_records(pos[5].offset, pos[7].offset),
    }[damage](path)
    meter = RecordingMeter()
    wal, info = Wal.open_with_meter(WalConfig(dir=d), meter)  # never raises: it cuts, and says so
    wal.close()
    assert info.corruption_detected and info.valid_records == 5
    (event,) = meter.events_of(CorruptionTruncated)
    assert event.offset == pos[5].offset and f"durable mark is 0:{end}" in event.reason
    assert read_all(d) == recs[:5]


def test_a_tail_past_the_durable_mark_is_a_crash_not_corruption(tmp_path):
    """Pages of an unacknowledged write that reached the disk out of order, past zeros: a legal tail."""
    d = str(tmp_path)
    recs, pos, path = unsealed_log(d)
    end = os.path.getsize(path)
    group = b"".join(_frame(Record.put(b"g%02d" % i, b"w" * 200)) for i in range(40))
    with open(path, "r+b") as f:
        f.seek(end + 4096)  # its first page lost (zeros), the next one kept
        f.write(group[4096:8192])
    wal, info = Wal.open(WalConfig(dir=d))
    wal.close()
    assert not info.corruption_detected and info.bytes_truncated == 8192 and read_all(d) == recs


def test_a_log_ending_below_the_durable_mark_is_corruption(tmp_path):
    d = str(tmp_path)
    recs, pos, path = unsealed_log(d)
    truncate_to(pos[15].offset)(path)  # whole records, but fewer than were durable
    wal, info = Wal.open(WalConfig(dir=d))
    wal.close()
    assert info.corruption_detected and info.bytes_truncated == 0 and info.valid_records == 15


def test_a_durable_mark_past_the_last_segment_is_reported_not_refused(tmp_path):
    """Segments holding durable records are gone (or a hot copy took the segments before the mark)."""
    from nori_wal.observe import CorruptionTruncated, RecordingMeter

    d = str(tmp_path)
    recs, pos, path = make_log(d, n=300, seg=16 * 1024)
    last = pos[-1].segment_id
    os.unlink(path)
    meter = RecordingMeter()
    wal, info = Wal.open_with_meter(WalConfig(dir=d, max_segment_size=16 * 1024), meter)
    wal.close()
    assert info.corruption_detected
    assert [(e.segment, e.bytes) for e in meter.events_of(CorruptionTruncated)] == [(last, 0)]
    assert "are gone" in meter.events_of(CorruptionTruncated)[0].reason
    assert read_all(d) == [r for r, p in zip(recs, pos) if p.segment_id < last]


def test_a_zeroed_last_header_with_records_behind_it_is_corruption(tmp_path):
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=300, seg=16 * 1024)
    os.unlink(os.path.join(d, "DURABLE"))  # (the mark alone would tell: see above)
    zero_records(0, HEADER_SIZE)(path)
    wal, info = Wal.open(WalConfig(dir=d, max_segment_size=16 * 1024))
    wal.close()
    assert info.corruption_detected


def test_a_zero_filled_last_segment_is_not_corruption(tmp_path):
    """All zeros, header included (no record behind it): nothing acknowledged was there."""
    d = str(tmp_path)
    recs, pos, path = make_log(d, n=300, seg=16 * 1024)
    os.unlink(os.path.join(d, "DURABLE"))
    zero_records(0, os.path.getsize(path))(path)
    wal, info = Wal.open(WalConfig(dir=d, max_segment_size=16 * 1024))
    wal.close()
    assert not info.corruption_detected and info.bytes_truncated > 0
