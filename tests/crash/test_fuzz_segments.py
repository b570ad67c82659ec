"""Hostile segment files: random and mutated bytes never crash recovery or readers, nor make them allocate.

Rules under test (docs/FORMAT.md, DESIGN.md rules 3 and 4):
* recovery of the LAST segment never raises: it keeps the valid prefix and cuts the rest;
* damage in an earlier (sealed) segment raises CorruptionError and nothing else;
* a reader raises CorruptionError or ends; nothing else escapes;
* no length read from the file is trusted before it is checked against what the file holds
  (etcd #14098 allocated 13 PB from a garbage length).

Runs in memory on FaultFS (the production code, unchanged, on an in-memory disk),
plus a few examples on real files for the mmap recovery path.
"""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nori_wal import CorruptionError, FsyncPolicy, Position, Record, Wal, WalConfig
from nori_wal.codec import _varint, encode_record, encode_seal
from nori_wal.reader import READ_SIZE, WalReader
from nori_wal.recovery import SCAN_CHUNK
from nori_wal.segment import encode_header, set_aside_files
from nori_wal.testing import FaultFS

D = "/fuzz/wal"
CFG = WalConfig(dir=D, max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always())
MAX_READ = max(READ_SIZE, SCAN_CHUNK)  # the largest read the code may ask for by design

records = st.builds(
    lambda k, v, kind: (
        Record.delete(k)
        if kind == 0
        else Record.put(k, v).with_compression(kind - 1)
        if kind in (1, 2, 3)
        else Record.put(k, v)
    ),
    st.binary(max_size=20),
    st.binary(max_size=300),
    st.integers(0, 4),
)


def segment(sid, recs, sealed):
    body = b"".join(encode_record(r) for r in recs)
    data = encode_header(sid) + body
    return data + (encode_seal(len(recs), len(data)) if sealed else b"")


@st.composite
def mutated(draw, sid=0, sealed=None):
    """A segment made of valid frames, then damaged: flips, cuts, zeros, garbage, huge lengths."""
    recs = draw(st.lists(records, max_size=8))
    seal = draw(st.booleans()) if sealed is None else sealed
    data = bytearray(segment(sid, recs, seal))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "zero", "garbage", "huge", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "zero":
            n = draw(st.integers(1, 600))
            data[at : at + n] = bytes(len(data[at : at + n]))
        elif kind == "garbage":
            data[at:] = draw(st.binary(max_size=200))
        elif kind == "huge":
            # A frame header claiming an enormous key or value, where a frame could start.
            n = draw(st.sampled_from([2**31 - 100, 2**35 - 1, 2**34, 13 * 10**15 % 2**35, 4095, 70000]))
            head = b"\x00\x00\x00\x00" + _varint(1) + _varint(n) + b"\x00"
            data[at:at] = draw(st.binary(min_size=4, max_size=4)) + head[4:] + draw(st.binary(max_size=30))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=40))
    return bytes(data), recs


def read_everything(wal_or_dir, layer=None):
    if isinstance(wal_or_dir, Wal):
        reader = wal_or_dir.read_from(Position(0, 0))
    else:
        reader = WalReader(wal_or_dir, layer=layer)
    with reader:
        return [(rec, pos) for rec, pos in reader]


def canon(rec):
    return Record(bytes(rec.key), bytes(rec.value), rec.tombstone, rec.ttl, rec.compression)


# -- the last segment: recovery never raises -------------------------------------------------


@given(st.binary(max_size=700))
@example(b"")
@example(encode_header(0)[:31])
@example(bytes(4096))
def test_recovery_of_random_bytes_as_the_last_segment_never_raises(data):
    """Any bytes as the only segment: open recovers without raising; a second open finds nothing to cut."""
    fs = FaultFS.from_files({f"{D}/000000.wal": data})
    wal, _ = Wal.open(CFG, layer=fs)
    with wal:
        read_everything(wal)
        wal.append(Record.put(b"after", b"fuzz"))
    wal, info = Wal.open(CFG, layer=fs)
    with wal:
        got = read_everything(wal)
    assert info.bytes_truncated == 0 and got[-1][0] == Record.put(b"after", b"fuzz")
    assert fs.largest_read <= MAX_READ


@given(mutated(sid=1), st.lists(records, min_size=1, max_size=4))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_recovery_of_a_damaged_last_segment_keeps_a_prefix_and_never_raises(last, first_recs):
    """A damaged last segment after a sealed one: open never raises; what comes back is a prefix of what was written.

    One exception, by design (recovery rule 3): a last segment that still ends with an intact
    seal was closed cleanly and is trusted without a rescan, so damage inside it is corruption
    in a sealed segment, which readers report with CorruptionError instead of skipping it.
    """
    data, recs = last
    fs = FaultFS.from_files({f"{D}/000000.wal": segment(0, first_recs, sealed=True), f"{D}/000001.wal": data})
    wal, _info = Wal.open(CFG, layer=fs)
    with wal:
        try:
            got = [canon(r) for r, _ in read_everything(wal)]
        except CorruptionError as exc:
            assert "segment 1" in str(exc) and ends_with_seal(fs.files()[f"{D}/000001.wal"])
            return
    written = [canon(r) for r in first_recs + recs]
    assert got == written[: len(got)] and len(got) >= len(first_recs)
    assert fs.largest_read <= MAX_READ
    wal, info2 = Wal.open(CFG, layer=fs)
    wal.close()
    assert info2.bytes_truncated == 0


@given(mutated(sid=1, sealed=False), st.lists(records, min_size=1, max_size=4))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_what_recovery_cuts_as_damage_it_sets_aside_byte_for_byte(last, first_recs):
    """Recovery Rule 8: corruption reported means every byte cut is kept, and a crash's tail means none is.

    The set-aside file holds the damaged segment from the cut on, exactly; the
    segment keeps the bytes before it (or, for a damaged header, is gone whole).
    """
    data, _recs = last
    fs = FaultFS.from_files({f"{D}/000000.wal": segment(0, first_recs, sealed=True), f"{D}/000001.wal": data})
    wal, info = Wal.open(CFG, layer=fs)
    files = fs.files()  # before close seals the segment
    wal.close()
    assert bool(info.set_aside) == info.corruption_detected  # (no durable mark on FaultFS)
    assert [name for _, _, name in set_aside_files([p.rsplit("/", 1)[1] for p in files])] == list(info.set_aside)
    for sid, offset, name in set_aside_files(list(info.set_aside)):
        assert sid == 1 and files[f"{D}/{name}"] == data[offset:]
        assert files.get(f"{D}/000001.wal") == (data[:offset] if offset else None)


def ends_with_seal(data):
    from nori_wal.codec import SEAL_FRAME_SIZE, Seal, decode_record

    res = decode_record(data[-SEAL_FRAME_SIZE:], 0) if len(data) >= 32 + SEAL_FRAME_SIZE else None
    return isinstance(res, Seal) and res.data_end == len(data) - SEAL_FRAME_SIZE


# -- a damaged sealed segment: CorruptionError and nothing else ------------------------------


@given(mutated(sid=0, sealed=True), st.lists(records, max_size=3))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_a_damaged_sealed_segment_raises_only_corruption_error(first, last_recs):
    """Damage inside a segment that is not the last: open and readers raise CorruptionError or succeed."""
    data, _recs = first
    fs = FaultFS.from_files({f"{D}/000000.wal": data, f"{D}/000001.wal": segment(1, last_recs, sealed=False)})
    try:
        wal, _ = Wal.open(CFG, layer=fs)
    except CorruptionError as exc:
        assert "segment 0" in str(exc)
        return
    with wal:
        try:
            got = [canon(r) for r, _ in read_everything(wal)]
        except CorruptionError as exc:
            assert "segment" in str(exc) and "offset" in str(exc)
            return
    # Read to the end without an error: then it read exactly what was written, or the
    # damage left a shorter valid segment with an intact seal (still no invented record).
    assert got[len(got) - len(last_recs) :] == [canon(r) for r in last_recs] or not last_recs
    assert fs.largest_read <= MAX_READ


@given(st.lists(mutated(), min_size=1, max_size=3))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_a_reader_on_arbitrary_segment_files_raises_only_corruption_error(segs):
    """Readers (no recovery: a crashed writer's directory) end or raise CorruptionError; nothing else."""
    fs = FaultFS.from_files({f"{D}/{i:06d}.wal": d for i, (d, _) in enumerate(segs)})
    try:
        read_everything(D, layer=fs)
    except CorruptionError:
        pass
    assert fs.largest_read <= MAX_READ


# -- lengths are untrusted --------------------------------------------------------------------

HUGE = [2**31 - 100, 2**31 - 1, 2**35 - 1, 13 * 10**15 % 2**35]


def tail_claiming(n, where="value"):
    """A frame header at the tail whose key or value length claims ``n`` bytes."""
    key_len, value_len = (n, 1) if where == "key" else (1, n)
    return b"\x11\x22\x33\x44" + _varint(key_len) + _varint(value_len) + b"\x00" + b"kv" * 10


@pytest.mark.parametrize("n", HUGE)
@pytest.mark.parametrize("where", ["key", "value"])
def test_a_garbage_length_at_the_tail_is_never_allocated(tmp_path, n, where):
    """A reader and recovery on a real file whose tail claims gigabytes allocate at most a few MiB."""
    d = str(tmp_path)
    path = os.path.join(d, "000000.wal")
    with open(path, "wb") as f:
        f.write(segment(0, [Record.put(b"a", b"b")], sealed=False) + tail_claiming(n, where))
    tracemalloc.start()
    try:
        with WalReader(d) as r:
            assert [canon(x) for x, _ in r] == [Record.put(b"a", b"b")]
        _, reader_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        wal, info = Wal.open(WalConfig(dir=d, fsync_policy=FsyncPolicy.always()))
        wal.close()
        _, open_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.bytes_truncated == len(tail_claiming(n, where))
    assert reader_peak < 16 * 2**20 and open_peak < 16 * 2**20, (reader_peak, open_peak)


def checksummed(flags_and_body):
    from crc32c import crc32c

    return struct.pack("<I", crc32c(flags_and_body)) + flags_and_body


@pytest.mark.parametrize("compression", [1, 2])
def test_a_checksummed_value_claiming_a_huge_decompressed_size_is_not_allocated(tmp_path, compression):
    """A frame with a valid CRC whose compressed value claims 2 GiB: CorruptionError, no 2 GiB allocation.

    A CRC is not a signature: anyone can compute it, so the size a compressed value claims is
    checked against what its stored bytes could possibly expand to before anything is allocated.
    """
    import zstandard

    claim = 2**31 - 100
    if compression == 1:  # LZ4 block with a stored size prefix
        stored = struct.pack("<I", claim) + b"\x10abc"
    else:  # a zstd frame whose content-size field was rewritten
        stored = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 100000))
        struct.pack_into("<I", stored, 5, claim)
        stored = bytes(stored)
    frame = checksummed(_varint(1) + _varint(len(stored)) + bytes([compression << 2]) + b"k" + stored)
    d = str(tmp_path)
    with open(os.path.join(d, "000000.wal"), "wb") as f:
        f.write(segment(0, [], sealed=False) + frame + encode_record(Record.put(b"next", b"x")))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptionError, match="segment 0 offset 32"), WalReader(d) as r:
            list(r)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, peak


@given(st.integers(0, 2**35 - 1), st.binary(max_size=40))
def test_any_declared_length_never_sets_the_read_size(n, junk):
    """Whatever length a tail frame declares, no read asks for more than the code's fixed chunk sizes."""
    data = segment(0, [Record.put(b"a", b"b")], sealed=False) + b"\x01\x02\x03\x04" + _varint(1) + _varint(n) + junk
    fs = FaultFS.from_files({f"{D}/000000.wal": data})
    try:
        read_everything(D, layer=fs)
    except CorruptionError:
        pass
    wal, _ = Wal.open(CFG, layer=fs)
    wal.close()
    assert fs.largest_read <= MAX_READ
