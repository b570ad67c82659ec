"""The record codec: round trips, and every truncation or single-byte corruption is detected."""

import inspect
import struct
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import lz4.block
import pytest
import zstandard
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from nori_wal import Compression, Record, RecordTooLargeError, WalError, codec
from nori_wal.codec import (
    CORRUPT,
    FLAG_TTL,
    FORMAT_MAX_FRAME,
    LZ4_MAX_INPUT,
    MAX_DECOMPRESSED_VALUE,
    MAX_TTL_MS,
    MAX_VARINT_BYTES,
    Corrupt,
    Decoded,
    NeedMore,
    Seal,
    Zeroed,
    _varint,
    check_value_size,
    decode_record,
    encode_record,
    encode_seal,
    frame_layout,
)
from nori_wal.reader import WalReader
from nori_wal.scan import Stop, one_plain_frame, scan_frames

keys = st.binary(max_size=300)
values = st.binary(max_size=3000) | st.builds(
    lambda b, n: b * n, st.binary(min_size=1, max_size=4), st.integers(0, 2000)
)
ttls = st.none() | (st.integers(0, 10**12) | st.integers(0, MAX_TTL_MS)).map(lambda ms: timedelta(milliseconds=ms))
compressions = st.sampled_from(list(Compression))


@st.composite
def records(draw):
    kind = draw(st.sampled_from(["put", "ttl", "delete"]))
    key = draw(keys)
    if kind == "delete":
        rec = Record.delete(key)
    elif kind == "ttl":
        rec = Record.put_with_ttl(key, draw(values), draw(ttls.filter(lambda t: t is not None)))
    else:
        rec = Record.put(key, draw(values))
    return rec.with_compression(draw(compressions))


@given(records())
def test_round_trip(rec):
    """decode(encode(r)) == r, whole and at an offset inside a larger buffer."""
    frame = encode_record(rec)
    res = decode_record(frame)
    assert isinstance(res, Decoded) and res.record == rec and res.end == len(frame)
    assert bytes(res.record.value) == bytes(rec.value)
    res = decode_record(b"xyz" + frame + b"tail", 3)
    assert isinstance(res, Decoded) and res.record == rec and res.end == 3 + len(frame)


@given(records(), st.binary(max_size=40), st.sampled_from([bytes, bytearray, memoryview]))
def test_a_prefix_shares_the_frames_buffer_and_changes_nothing_else(rec, prefix, kind):
    """encode_record(r, prefix) == prefix + encode_record(r), for any bytes-like key and value."""
    frame = encode_record(rec)
    assert encode_record(rec, prefix) == prefix + frame
    other = rec._replace(key=kind(rec.key), value=kind(rec.value))
    assert encode_record(other) == frame


@given(records(), st.data())
def test_every_truncation_is_need_more_or_zeroed(rec, data):
    """A cut-off frame is 'need more bytes' (a torn tail), never a record and never corrupt."""
    frame = encode_record(rec)
    cut = data.draw(st.integers(0, len(frame) - 1))
    res = decode_record(frame[:cut])
    assert isinstance(res, (NeedMore, Zeroed))


def test_every_truncation_of_one_frame_byte_at_a_time():
    """Decoding the whole input and again byte at a time agree (h11's rule)."""
    frame = encode_record(
        Record.put_with_ttl(b"key", b"v" * 300, timedelta(seconds=3)).with_compression(Compression.LZ4)
    )
    for cut in range(len(frame)):
        assert isinstance(decode_record(frame[:cut]), (NeedMore, Zeroed)), cut
    assert isinstance(decode_record(frame), Decoded)


@given(records(), st.data())
def test_every_single_byte_corruption_is_detected(rec, data):
    """Changing any one byte never yields a different valid record."""
    frame = bytearray(encode_record(rec))
    at = data.draw(st.integers(0, len(frame) - 1))
    frame[at] ^= data.draw(st.integers(1, 255))
    res = decode_record(bytes(frame))
    assert not isinstance(res, (Decoded, Seal)) or (isinstance(res, Decoded) and res.record == rec)
    assert not isinstance(res, Decoded)


@given(st.binary(max_size=200))
def test_garbage_never_raises(blob):
    """decode_record returns Decoded, NeedMore, Zeroed, Corrupt or Seal, never raises."""
    assert isinstance(decode_record(blob), (Decoded, NeedMore, Zeroed, Corrupt, Seal))
    scan_frames(blob)


def test_huge_length_is_not_allocated():
    """A garbage 13 PB length (etcd #14098) is corrupt or torn, and nothing is allocated for it."""
    frame = bytearray(encode_record(Record.put(b"k", b"v")))
    frame[5:6] = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
    assert isinstance(decode_record(bytes(frame)), (Corrupt, NeedMore))
    assert isinstance(decode_record(bytes(frame), limit=1024), Corrupt)


def test_zero_tail_is_end_not_corruption():
    frame = encode_record(Record.put(b"k", b"v"))
    assert isinstance(decode_record(bytes(64)), Zeroed)
    res = scan_frames(frame * 3 + bytes(100))
    assert res.stop is Stop.ZEROED and res.records == 3 and res.valid_end == 3 * len(frame)


def test_seal_frame():
    seal = encode_seal(7, 1234)
    res = decode_record(seal)
    assert isinstance(res, Seal) and (res.record_count, res.data_end, res.end) == (7, 1234, len(seal))
    res = scan_frames(encode_record(Record.put(b"a", b"b")) + seal + b"junk")
    assert res.stop is Stop.SEALED and res.records == 1 and res.seal is not None


def test_ttl_keeps_millisecond_precision_and_compression_is_kept_even_when_useless():
    rec = Record.put_with_ttl(b"k", b"\x01\x02", timedelta(seconds=1, microseconds=2500)).with_compression(
        Compression.ZSTD
    )
    assert rec.ttl == timedelta(seconds=1, milliseconds=2)
    out = decode_record(encode_record(rec))
    assert isinstance(out, Decoded) and out.record == rec and out.record.compression is Compression.ZSTD


def test_negative_ttl_is_rejected():
    with pytest.raises(ValueError):
        Record.put_with_ttl(b"k", b"v", timedelta(seconds=-1))


def test_large_values_are_zero_copy_views():
    rec = Record.put(b"k", b"x" * 100_000)
    buf = encode_record(rec)
    out = decode_record(buf)
    assert isinstance(out, Decoded) and isinstance(out.record.value, memoryview) and out.record == rec


@given(st.lists(records(), max_size=20), st.data())
def test_scan_finds_exactly_the_whole_records_of_a_cut_stream(recs, data):
    """Scanning a stream cut anywhere yields exactly the records wholly before the cut."""
    frames = [encode_record(r) for r in recs]
    stream = b"".join(frames)
    cut = data.draw(st.integers(0, len(stream)))
    res = scan_frames(stream[:cut])
    ends = [sum(len(f) for f in frames[: i + 1]) for i in range(len(frames))]
    whole = sum(1 for e in ends if e <= cut)
    assert res.records == whole
    assert res.valid_end == (ends[whole - 1] if whole else 0)
    assert res.stop in ((Stop.END,) if res.valid_end == cut else (Stop.TORN, Stop.ZEROED))


def _plain(rec: Record) -> bool:
    """A record one_plain_frame is meant to take: no TTL, no compression, short key, value under 16 KiB."""
    return rec.ttl is None and rec.compression == Compression.NONE and len(rec.key) < 0x80 and len(rec.value) < 0x4000


@given(records(), st.integers(7, 1 << 20))
def test_one_plain_frame_takes_every_plain_record_that_fits(rec, limit):
    frame = encode_record(rec)
    assert one_plain_frame(frame, limit) == (_plain(rec) and len(frame) <= limit)


@given(st.lists(records(), min_size=1, max_size=3), st.data())
def test_one_plain_frame_accepts_only_what_scan_frames_accepts_as_one_record(recs, data):
    """Never a false yes: any accepted bytes (cut, corrupted, extended) scan as exactly one whole record."""
    buf = bytearray(b"".join(encode_record(r) for r in recs))
    for _ in range(data.draw(st.integers(0, 3))):
        if buf:
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
    buf = bytes(buf[: data.draw(st.integers(0, len(buf)))])
    limit = data.draw(st.integers(7, 1 << 20))
    if one_plain_frame(buf, limit):
        res = scan_frames(buf, 0, limit)
        assert (res.stop, res.valid_end, res.records, res.compressed) == (Stop.END, len(buf), 1, 0)


@given(st.binary(max_size=64))
def test_one_plain_frame_never_raises_on_garbage(blob):
    if one_plain_frame(blob, 1 << 20):
        assert scan_frames(blob).records == 1


# -- a TTL larger than a timedelta holds (it once passed every check and stopped every reader) ----


def _ttl_frame(ttl_ms: int, key: bytes = b"k", value: bytes = b"v") -> bytes:
    """A checksummed frame carrying any ttl_ms varint (encode_record only writes timedeltas)."""
    body = _varint(len(key)) + _varint(len(value)) + bytes((FLAG_TTL,)) + _varint(ttl_ms) + key + value
    return struct.pack("<I", crc32c(body)) + body


def test_max_ttl_is_the_largest_timedelta_in_whole_milliseconds():
    assert MAX_TTL_MS == timedelta.max // timedelta(milliseconds=1)
    timedelta(milliseconds=MAX_TTL_MS)
    with pytest.raises(OverflowError):
        timedelta(milliseconds=MAX_TTL_MS + 1)


def test_the_largest_timedelta_ttl_round_trips():
    rec = Record.put_with_ttl(b"k", b"v", timedelta.max)
    out = decode_record(encode_record(rec))
    assert isinstance(out, Decoded) and out.record == rec and out.record.ttl == timedelta(milliseconds=MAX_TTL_MS)


@pytest.mark.parametrize("ttl_ms", [MAX_TTL_MS + 1, 2**63, 2 ** (7 * MAX_VARINT_BYTES) - 1])
def test_a_ttl_beyond_timedelta_is_corrupt_not_an_overflow(ttl_ms):
    """decode_record never raises: an overflowing TTL is Corrupt, and a scan stops there."""
    bad = _ttl_frame(ttl_ms)
    res = decode_record(bad)
    assert isinstance(res, Corrupt) and "ttl" in res.reason
    assert frame_layout(bad, 0, len(bad), FORMAT_MAX_FRAME) == CORRUPT
    good = encode_record(Record.put(b"a", b"1"))
    res = scan_frames(good + bad + good)
    assert (res.stop, res.records, res.valid_end) == (Stop.CORRUPT, 1, len(good)) and "ttl" in res.reason


@given(st.integers(0, 2 ** (7 * MAX_VARINT_BYTES) - 1), st.binary(max_size=20), st.binary(max_size=50))
def test_any_ttl_varint_decodes_or_is_corrupt(ttl_ms, key, value):
    frame = _ttl_frame(ttl_ms, key, value)
    res = decode_record(frame)
    if ttl_ms <= MAX_TTL_MS:
        assert isinstance(res, Decoded) and res.record.ttl == timedelta(milliseconds=ttl_ms)
        assert scan_frames(frame).stop is Stop.END
    else:
        assert isinstance(res, Corrupt)
        assert scan_frames(frame).stop is Stop.CORRUPT


def test_encoding_refuses_a_ttl_decoding_would_reject():
    """Only a ttl that is no timedelta can exceed MAX_TTL_MS; it is refused, not written."""

    class Forever:
        def __floordiv__(self, unit):
            return MAX_TTL_MS + 1

    with pytest.raises(ValueError, match="ttl"):
        encode_record(Record(b"k", b"v", False, Forever()))


# -- a compressed value readers could not decompress is refused before it is compressed ------------


def test_value_size_limits_match_the_readers_and_lz4():
    """Readers decompress within their default limit; LZ4 takes at most LZ4_MAX_INPUT_SIZE (lz4.h)."""
    assert MAX_DECOMPRESSED_VALUE == inspect.signature(WalReader).parameters["limit"].default == FORMAT_MAX_FRAME
    assert LZ4_MAX_INPUT == 0x7E000000
    check_value_size(FORMAT_MAX_FRAME, Compression.ZSTD)
    check_value_size(LZ4_MAX_INPUT, Compression.LZ4)
    check_value_size(2**40, Compression.NONE)  # an uncompressed value is bounded by its frame
    with pytest.raises(RecordTooLargeError, match="ZSTD value of 2147483648 bytes"):
        check_value_size(FORMAT_MAX_FRAME + 1, Compression.ZSTD)
    with pytest.raises(RecordTooLargeError, match="LZ4 value of 2113929217 bytes"):
        check_value_size(LZ4_MAX_INPUT + 1, Compression.LZ4)
    with pytest.raises(RecordTooLargeError):
        check_value_size(FORMAT_MAX_FRAME + 1, Compression.LZ4)


@pytest.mark.parametrize("comp", [Compression.LZ4, Compression.ZSTD])
def test_a_compressed_value_over_the_decode_limit_is_refused_before_compressing(monkeypatch, comp):
    """What encode_record accepts, a reader decompressing within the same limit reads back (limit shrunk)."""
    limit = 4096
    monkeypatch.setattr(codec, "MAX_DECOMPRESSED_VALUE", limit)
    ok = Record.put(b"k", bytes(limit)).with_compression(comp)
    res = decode_record(encode_record(ok), limit=limit)
    assert isinstance(res, Decoded) and res.record == ok

    def no_compressing(*args, **kwargs):
        raise AssertionError("compressed a value that is refused anyway")

    monkeypatch.setattr(lz4.block, "compress", no_compressing)
    monkeypatch.setattr(codec._ZSTD, "compressor", type("NoZstd", (), {"compress": staticmethod(no_compressing)})())
    with pytest.raises(RecordTooLargeError, match=f"{comp.name} value of {limit + 1} bytes"):
        encode_record(Record.put(b"k", bytes(limit + 1)).with_compression(comp))


def test_lz4_past_its_input_limit_is_record_too_large(monkeypatch):
    """LZ4 fails above LZ4_MAX_INPUT (LZ4BlockError); the value is refused first (limit shrunk)."""
    monkeypatch.setattr(codec, "LZ4_MAX_INPUT", 1000)
    with pytest.raises(RecordTooLargeError, match="LZ4 compresses"):
        encode_record(Record.put(b"k", bytes(1001)).with_compression(Compression.LZ4))
    encode_record(Record.put(b"k", bytes(1001)).with_compression(Compression.ZSTD))


def test_a_compressor_failure_is_a_wal_error(monkeypatch):
    def lz4_fails(*args, **kwargs):
        raise lz4.block.LZ4BlockError("Compression failed")

    def zstd_fails(*args, **kwargs):
        raise zstandard.ZstdError("cannot compress")

    monkeypatch.setattr(lz4.block, "compress", lz4_fails)
    monkeypatch.setattr(codec._ZSTD, "compressor", type("FailingZstd", (), {"compress": staticmethod(zstd_fails)})())
    for comp, cause in ((Compression.LZ4, lz4.block.LZ4BlockError), (Compression.ZSTD, zstandard.ZstdError)):
        with pytest.raises(WalError, match=f"{comp.name} compression of a 10-byte value failed") as e:
            encode_record(Record.put(b"k", bytes(10)).with_compression(comp))
        assert isinstance(e.value.__cause__, cause)


def test_threads_compress_and_decompress_zstd_at_once():
    """A zstd context is not thread-safe; many writer and client threads encode and decode together."""
    values = [bytes([i]) * 50 + bytes(range(i, i + 30)) for i in range(64)]

    def round_trips(_: int) -> bool:
        for v in values * 20:
            frame = encode_record(Record.put(b"k", v).with_compression(Compression.ZSTD))
            if decode_record(frame, 0).record.value != v:
                return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trips, range(8)))
