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
    PUT_OVERHEAD,
    SCAN_FLAGS,
    Decoded,
    decode_record,
    encode_record,
    fast_frame,
    fast_run,
    frame_end,
    parse_header,
    put_run,
)
from nori_wal.position import Position
from nori_wal.record import Compression, Record
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


@given(
    st.binary(max_size=9),
    st.lists(frames_or_garbage(), max_size=6),
    st.integers(7, 1 << 21),
    st.integers(0, 1 << 15),
    st.integers(0, 8),
    st.integers(0, 2**40),
)
def test_put_run_is_fast_frame_of_plain_puts_frame_after_frame(prefix, parts, limit, max_value, count, base):
    """put_run's pairs are the records decode_record reads where fast_frame(PUT_FLAGS) takes frame after frame.

    While the value is under ``max_value`` and ``limit - PUT_OVERHEAD`` and the
    frame's first 8 bytes are there, for at most ``count`` frames, from any offset.
    """
    buf = prefix + b"".join(parts)
    n = len(buf)
    off, want = len(prefix), []
    bound = min(max_value, limit - PUT_OVERHEAD + 1)
    while len(want) < count and off + 8 <= n:
        lay = fast_frame(buf, off, n, limit, PUT_FLAGS)
        if lay is None or lay[1] - lay[0] >= bound:
            break
        res = decode_record(buf, off, limit=limit)
        assert isinstance(res, Decoded) and res.end == lay[1]
        want.append((res.record, Position(7, base + off)))
        off = lay[1]
    pairs, end = put_run(buf, len(prefix), limit, max_value, count, 7, base)
    assert (pairs, end) == (want, off)
    for rec, pos in pairs:
        assert type(rec) is Record and type(pos) is Position and type(rec.value) is bytes and type(rec.key) is bytes
        assert rec.compression is Compression.NONE


# Plain puts with keys under 128 bytes, their sizes often at a varint's or a limit's edge.
plain_puts = st.builds(
    lambda key, size, fill: Record.put(key, fill * size),
    st.binary(max_size=0x7F) | st.just(b"k" * 0x7F),
    st.integers(0, 0x4100) | st.sampled_from([0x7F, 0x80, 0x3FFF, 0x4000, 0x4100]),
    st.binary(min_size=1, max_size=1),
)


@given(st.lists(plain_puts, max_size=8), st.integers(1 << 15, FORMAT_MAX_FRAME))
def test_put_run_takes_every_plain_put(recs, limit):
    """A run of plain puts (keys under 128 bytes, values under max_value) is read whole by put_run."""
    frames = [encode_record(r) for r in recs]
    buf = b"".join(frames)
    starts = [sum(map(len, frames[:i])) for i in range(len(frames))]
    if frames and len(frames[-1]) < 8:  # a last frame of 7 bytes (no key, no value) is left to the slow path
        frames.pop()
        recs.pop()
    pairs, end = put_run(buf, 0, limit, 0x4100 + 1, 8, 3, 100)
    assert pairs == [(r, Position(3, 100 + s)) for r, s in zip(recs, starts)]
    assert end == sum(map(len, frames))


def test_put_run_keeps_within_limit():
    """put_run never takes a frame over ``limit``, and takes any whose value is under ``limit - PUT_OVERHEAD``.

    Every edge: keys of 0 and 127 bytes, values at each varint width's edge, limits around the frame's size.
    """
    for key in (b"", b"k" * 0x7F):
        for size in (0, 0x7F, 0x80, 0x3FFF, 0x4000, 0x4100):
            rec = Record.put(key, b"v" * size)
            frame = encode_record(rec)
            for limit in range(max(7, len(frame) - PUT_OVERHEAD - 5), len(frame) + 5):
                pairs, _ = put_run(frame + b"\0", 0, limit, 1 << 20, 1, 0, 0)  # (8 bytes even for an empty frame)
                if pairs:
                    assert len(frame) <= limit
                if size <= limit - PUT_OVERHEAD:
                    assert pairs == [(rec, Position(0, 0))]


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
