"""codec's fast paths give decode_record's verdict on every input (one header parser, fast paths beside it).

And ``scan.classify_tail`` never raises, whatever the bytes.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nori_wal.codec import (
    CORRUPT,
    FORMAT_MAX_FRAME,
    PLAIN_FLAGS,
    PUT_FLAGS,
    SCAN_FLAGS,
    Decoded,
    decode_record,
    encode_record,
    fast_frame,
    fast_puts,
    fast_run,
    frame_end,
    parse_header,
)
from nori_wal.record import Record
from nori_wal.scan import Damage, classify_tail, scan_frames

records = st.builds(
    lambda k, v, kind: Record.delete(k) if kind == 0 else Record.put(k, v).with_compression(kind - 1),
    st.binary(max_size=140),
    st.binary(max_size=20000),
    st.integers(0, 3),
)


@st.composite
def frames_or_garbage(draw):
    """A valid frame, maybe mutated (flips, cuts), or random bytes."""
    if draw(st.booleans()):
        data = bytearray(encode_record(draw(records)))
        for _ in range(draw(st.integers(0, 2))):
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= draw(st.integers(1, 255))
        if draw(st.booleans()):
            del data[draw(st.integers(0, len(data))) :]
        return bytes(data)
    return draw(st.binary(max_size=64))


@given(st.lists(frames_or_garbage(), max_size=6), st.integers(7, 1 << 21))
def test_fast_run_is_fast_frame_frame_after_frame(parts, limit):
    """fast_run's (end, frames, compressed) is what calling fast_frame frame after frame gives."""
    buf = b"".join(parts)
    n = len(buf)
    for table in (SCAN_FLAGS, PLAIN_FLAGS, PUT_FLAGS):
        off = frames = compressed = 0
        while (lay := fast_frame(buf, off, n, limit, table)) is not None:
            frames += 1
            compressed += bool(buf[lay[0] - buf[off + 4] - 1] & 0x0C)  # the flags byte before the key
            off = lay[1]
        assert fast_run(buf, 0, n, limit, table) == (off, frames, compressed)


@given(st.lists(frames_or_garbage(), max_size=6), st.integers(7, 1 << 21), st.integers(0, 1 << 15))
def test_fast_puts_is_fast_frame_of_plain_puts_frame_after_frame(parts, limit, max_value):
    """fast_puts lists the (value_start, end) fast_frame(PUT_FLAGS) gives, up to the first value >= max_value."""
    buf = b"".join(parts)
    n = len(buf)
    off, want = 0, []
    while (lay := fast_frame(buf, off, n, limit, PUT_FLAGS)) is not None and lay[1] - lay[0] < max_value:
        want += lay
        off = lay[1]
    assert fast_puts(buf, 0, n, limit, max_value) == want


@given(frames_or_garbage(), st.integers(7, 1 << 21))
def test_fast_frame_takes_only_what_decode_record_takes(buf, limit):
    """fast_frame returns an end only where frame_end (and, without compression, decode_record) agrees."""
    n = len(buf)
    for table in (SCAN_FLAGS, PLAIN_FLAGS, PUT_FLAGS):
        lay = fast_frame(buf, 0, n, limit, table)
        if lay is None:
            continue
        vs, end = lay
        assert frame_end(buf, 0, n, limit) == end
        if table is not SCAN_FLAGS:
            res = decode_record(buf, 0, limit=limit)
            assert isinstance(res, Decoded) and res.end == end and bytes(res.record.value) == buf[vs:end]


@given(records)
def test_fast_frame_takes_every_plain_put(rec):
    frame = encode_record(rec)
    if rec.compression == 0 and not rec.tombstone and len(rec.key) < 0x80:
        assert fast_frame(frame, 0, len(frame), FORMAT_MAX_FRAME, PUT_FLAGS) is not None


def test_a_varint_over_64_bits_is_corrupt_not_a_huge_length():
    head = b"\x01\x02\x03\x04\x01" + b"\xff" * 9 + b"\x7f"
    assert parse_header(head, 0, len(head)) == CORRUPT
    assert parse_header(head[:10], 0, 10) == CORRUPT  # already over the format limit: never "not yet"


@given(st.binary(max_size=300), st.booleans())
def test_classify_tail_never_raises(data, last):
    """Any bytes after a header: a verdict, never an exception; a clean scan is NONE."""
    res = scan_frames(data)
    v = classify_tail(res, len(data), lambda off, n: data[off : off + n], last=last)
    assert v.offset == res.valid_end
    assert (v.damage is Damage.NONE) == (res.valid_end == len(data) and res.stop.value in ("end", "sealed"))
