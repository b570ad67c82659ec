"""Keyed frames on the fast paths: the encoder's, fast_frame/fast_run's (which find the keys), the writer's
one-record check; each gives what the general path gives (property-tested)."""

from __future__ import annotations

import struct
from datetime import timedelta

from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from nori_wal import Compression, Record
from nori_wal.codec import (
    FORMAT_MAX_FRAME,
    SCAN_FLAGS,
    Decoded,
    decode_record,
    encode_record,
    encode_with_key,
    fast_frame,
    fast_run,
    frame_end,
)
from nori_wal.dedupe_files import keys_in
from nori_wal.scan import Stop, one_keyed_frame, scan_frames

idem_keys = st.binary(min_size=1, max_size=128)
records = st.builds(
    lambda k, v, kind, ttl: (Record.delete(k) if kind == 0 else Record.put(k, v).with_compression(kind - 1))._replace(
        ttl=ttl
    ),
    st.binary(max_size=140),
    st.binary(max_size=17000),
    st.integers(0, 3),
    st.none() | st.just(timedelta(seconds=5)),
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), value=st.binary(max_size=17000), idem=idem_keys, tombstone=st.booleans())
def test_the_encoders_keyed_frame_is_the_format_byte_for_byte(key, value, idem, tombstone):
    """The fast path's frame is FORMAT.md's: crc, varint key length, varint value-region length, flags,
    key, then the key block (u8 length, key) and the value."""
    value = b"" if tombstone else value
    body = _varint(len(key)) + _varint(1 + len(idem) + len(value)) + bytes([0x11 if tombstone else 0x10])
    body += key + bytes([len(idem)]) + idem + value
    want = struct.pack("<I", crc32c(body)) + body
    rec = (Record.delete(key) if tombstone else Record.put(key, value)).with_idempotency_key(idem)
    assert encode_record(rec) == want
    assert encode_record(rec, b"HEAD") == b"HEAD" + want
    assert encode_with_key(rec._replace(idempotency_key=None), idem) == want
    assert encode_with_key(rec, idem, b"HEAD") == b"HEAD" + want


@settings(max_examples=100, deadline=None)
@given(rec=records, idem=idem_keys)
def test_encode_with_key_is_encode_record_of_the_keyed_record(rec, idem):
    assert encode_with_key(rec, idem) == encode_record(rec._replace(idempotency_key=idem))


@st.composite
def keyed_or_not(draw):
    """A frame, keyed or not, maybe damaged (flips, cuts), or random bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=64))
    rec = draw(records)
    if draw(st.booleans()):
        rec = rec.with_idempotency_key(draw(idem_keys))
    data = bytearray(encode_record(rec))
    for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
    if draw(st.integers(0, 4)) == 0:
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(st.lists(keyed_or_not(), max_size=6), st.integers(7, 1 << 21))
def test_fast_run_finds_the_keys_fast_frame_takes_frame_after_frame(parts, limit):
    """fast_run over keyed frames: the same run as fast_frame frame after frame, and the keys of its keyed
    frames, each where decode_record says it is."""
    buf = b"".join(parts)
    n = len(buf)
    off = frames = compressed = 0
    want: list[int | bytes] = []
    while (lay := fast_frame(buf, off, n, limit, SCAN_FLAGS)) is not None:
        assert frame_end(buf, off, n, limit) == lay[1]  # only what the general check takes
        got = decode_record(buf, off, limit=limit)
        if buf[lay[0] - buf[off + 4] - 1] & 0x0C == 0:  # (uncompressed: decode_record says the same)
            assert isinstance(got, Decoded) and got.end == lay[1]
            if got.record.idempotency_key is not None:
                want += (off, got.record.idempotency_key)
        elif isinstance(got, Decoded) and got.record.idempotency_key is not None:
            want += (off, got.record.idempotency_key)
        frames += 1
        compressed += bool(buf[lay[0] - buf[off + 4] - 1] & 0x0C)
        off = lay[1]
    keys: list[int | bytes] = []
    assert fast_run(buf, 0, n, limit, SCAN_FLAGS, keys) == (off, frames, compressed)
    if all(isinstance(decode_record(buf, o, limit=limit), Decoded) for o in keys[0::2]):  # type: ignore[arg-type]
        assert keys == want
    mv_keys: list[int | bytes] = []
    assert fast_run(memoryview(buf), 0, n, limit, SCAN_FLAGS, mv_keys) == (off, frames, compressed)
    assert mv_keys == keys and all(type(k) is bytes for k in mv_keys[1::2])


@settings(max_examples=300, deadline=None)
@given(st.lists(keyed_or_not(), max_size=6))
def test_the_scan_finds_every_keyed_record_as_the_key_rebuild_does(parts):
    buf = b"".join(parts)
    keys: list[int | bytes] = []
    res = scan_frames(buf, 0, FORMAT_MAX_FRAME, keys)
    found = list(zip(keys[0::2], keys[1::2]))
    assert res.keyed == len(found)
    assert found == [(o, k) for o, k in keys_in(buf, 0) if o < res.valid_end]


@settings(max_examples=300, deadline=None)
@given(keyed_or_not(), st.integers(7, 1 << 21))
def test_one_keyed_frame_takes_only_one_whole_valid_uncompressed_keyed_record(buf, limit):
    key = one_keyed_frame(buf, limit)
    if key is None:
        return
    got = decode_record(buf, 0, limit=limit)
    assert isinstance(got, Decoded) and got.end == len(buf) <= limit
    assert got.record.idempotency_key == key and got.record.compression == 0 and got.record.ttl is None
    res = scan_frames(buf, 0, limit)
    assert (res.stop, res.records, res.valid_end) == (Stop.END, 1, len(buf))


def test_one_keyed_frame_takes_a_retrying_producers_record():
    frame = encode_record(Record.put(b"k", b"v" * 300).with_idempotency_key(b"\x00" + bytes(15)))
    assert one_keyed_frame(frame, FORMAT_MAX_FRAME) == b"\x00" + bytes(15)
    assert one_keyed_frame(encode_record(Record.put(b"k", b"v")), FORMAT_MAX_FRAME) is None
    compressed = encode_record(
        Record.put(b"k", b"v" * 300).with_compression(Compression.LZ4).with_idempotency_key(b"i")
    )
    assert one_keyed_frame(compressed, FORMAT_MAX_FRAME) is None  # (the full check decompresses it)
