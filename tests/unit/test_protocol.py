"""The wire protocol (pure): requests, payload validation, unit splitting, replies, error names."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nori_wal import (
    CorruptionError,
    Position,
    ProtocolError,
    Record,
    RecordTooLargeError,
    WalClosedError,
    WalError,
    WalIOError,
    WalLockedError,
    WriterUnavailableError,
)
from nori_wal import protocol as P
from nori_wal.codec import FLAG_TTL, encode_record, encode_seal

records = st.builds(Record.put, st.binary(max_size=40), st.binary(max_size=300))
record_lists = st.lists(records, min_size=1, max_size=20)


def payload_of(recs):
    frames = [encode_record(r) for r in recs]
    return b"".join(frames), frames


# -- requests ---------------------------------------------------------------------------------


def test_append_request_round_trip():
    payload, _ = payload_of([Record.put(b"k", b"v")] * 3)
    req = P.decode_request([P.encode_append(7, 3), payload])
    assert req == P.Append(7, 3, payload)


@pytest.mark.parametrize("op", [P.Op.SYNC, P.Op.POSITION, P.Op.INFO])
def test_control_request_round_trip(op):
    assert P.decode_request([P.encode_request(op, 9)]) == P.Control(9, op)


def test_delete_request_carries_a_position():
    assert P.decode_request([P.encode_request(P.Op.DELETE, 3, 2, 32)]) == P.Control(3, P.Op.DELETE, Position(2, 32))


@pytest.mark.parametrize(
    "frames, says",
    [
        ([], "1 or 2 frames"),
        ([b"a", b"b", b"c"], "1 or 2 frames"),
        ([b"\xc1"], "not msgpack"),
        ([msgpack.packb({"a": 1})], "array of integers"),
        ([msgpack.packb([1, 2])], "array of integers"),
        ([msgpack.packb([1, 1, "x", 1])], "array of integers"),
        ([msgpack.packb([2, 1, 5, 1]), b"x"], "version 2"),
        ([msgpack.packb([1, 99, 5])], "unknown op 99"),
        ([msgpack.packb([1, 1, 5])], "APPEND takes 1 argument"),
        ([msgpack.packb([1, 1, 5, 1])], "needs a payload"),
        ([msgpack.packb([1, 2, 5]), b"x"], "no payload"),
        ([msgpack.packb([1, 4, 5, -1, 0])], "negative"),
        ([b"\x90" * 300], "exceeds"),
    ],
)
def test_malformed_requests_are_bad_requests(frames, says):
    req = P.decode_request(frames)
    assert isinstance(req, P.BadRequest)
    assert isinstance(req.error, ProtocolError)
    assert says in str(req.error)


def test_a_bad_request_keeps_its_id_when_the_header_is_readable():
    req = P.decode_request([msgpack.packb([2, 1, 42, 1]), b"x"])
    assert isinstance(req, P.BadRequest) and req.request_id == 42


@given(st.lists(st.binary(max_size=64), max_size=4))
def test_decode_request_never_raises(frames):
    """decode_request returns Append, Control or BadRequest for any frames; it never raises."""
    assert isinstance(P.decode_request(frames), (P.Append, P.Control, P.BadRequest))


# -- payload validation -----------------------------------------------------------------------


@given(record_lists)
def test_valid_payloads_pass(recs):
    """Frames from encode_record, back to back, with the right count, are accepted."""
    payload, _ = payload_of(recs)
    assert P.check_payload(payload, len(recs), 1 << 20) is None


@given(record_lists, st.integers(min_value=1, max_value=5))
def test_a_wrong_record_count_is_rejected(recs, delta):
    payload, _ = payload_of(recs)
    err = P.check_payload(payload, len(recs) + delta, 1 << 20)
    assert isinstance(err, ProtocolError)


@given(record_lists, st.data())
def test_any_single_byte_change_is_rejected(recs, data):
    """Changing any one byte of a valid payload makes it invalid (CRC32C covers header and payload)."""
    payload, _ = payload_of(recs)
    i = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    x = data.draw(st.integers(min_value=1, max_value=255))
    bad = bytearray(payload)
    bad[i] ^= x
    assert isinstance(P.check_payload(bytes(bad), len(recs), 1 << 20), ProtocolError)


@given(record_lists, st.data())
def test_any_truncation_is_rejected(recs, data):
    """A payload cut anywhere is rejected (cut at a frame boundary, its count no longer matches)."""
    payload, _ = payload_of(recs)
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    assert isinstance(P.check_payload(payload[:cut], len(recs), 1 << 20), ProtocolError)


def test_seal_frames_are_writer_internal():
    payload, _ = payload_of([Record.put(b"a", b"b")])
    err = P.check_payload(payload + encode_seal(1, 32), 2, 1 << 20)
    assert isinstance(err, ProtocolError) and "seal" in str(err)
    assert f"record 1 at payload offset {len(payload)} " in str(err)  # where the seal starts


def test_reserved_flags_are_rejected():
    from crc32c import crc32c

    body = bytes([1, 1, 0x10]) + b"kv"
    frame = crc32c(body).to_bytes(4, "little") + body
    err = P.check_payload(frame, 1, 1 << 20)
    assert isinstance(err, ProtocolError) and "record 0 at payload offset 0" in str(err)


def test_garbage_and_zeros_are_rejected():
    assert isinstance(P.check_payload(b"\x00" * 20, 1, 1 << 20), ProtocolError)
    assert isinstance(P.check_payload(b"garbage garbage", 1, 1 << 20), ProtocolError)
    assert isinstance(P.check_payload(b"", 1, 1 << 20), ProtocolError)


def test_a_frame_larger_than_a_segment_is_record_too_large():
    small, _ = payload_of([Record.put(b"a", b"b")])
    big = encode_record(Record.put(b"k", b"x" * 5000))
    err = P.check_payload(small + big, 2, 4000)
    assert isinstance(err, RecordTooLargeError)
    assert "record 1 at payload offset %d" % len(small) in str(err)
    assert "4000" in str(err)


def test_a_payload_over_the_message_limit_is_record_too_large(monkeypatch):
    monkeypatch.setattr(P, "MAX_PAYLOAD_BYTES", 100)
    payload, _ = payload_of([Record.put(b"a", b"b" * 200)])
    assert isinstance(P.check_payload(payload, 1, 1 << 20), RecordTooLargeError)


def test_ttl_and_compressed_records_pass():
    from datetime import timedelta

    from nori_wal import Compression

    recs = [
        Record.put_with_ttl(b"a", b"b", timedelta(seconds=3)),
        Record.put(b"c", b"d" * 500).with_compression(Compression.LZ4),
        Record.put(b"e", b"f" * 500).with_compression(Compression.ZSTD),
        Record.delete(b"g"),
    ]
    payload, frames = payload_of(recs)
    assert frames[0][6] & FLAG_TTL
    assert P.check_payload(payload, 4, 1 << 20) is None


def test_a_ttl_beyond_timedelta_is_rejected_not_written():
    """A frame whose TTL no timedelta holds would stop every reader: the writer refuses it (ERR reply)."""
    import struct
    from datetime import timedelta

    from crc32c import crc32c

    from nori_wal.codec import MAX_TTL_MS, _varint

    def ttl_frame(ttl_ms):
        body = b"\x01\x01" + bytes((FLAG_TTL,)) + _varint(ttl_ms) + b"kv"
        return struct.pack("<I", crc32c(body)) + body

    good = encode_record(Record.put(b"a", b"1"))
    assert P.check_payload(good + ttl_frame(MAX_TTL_MS), 2, 1 << 20) is None
    assert P.check_payload(encode_record(Record.put_with_ttl(b"k", b"v", timedelta.max)), 1, 1 << 20) is None
    for ttl_ms in (MAX_TTL_MS + 1, 2**63):
        err = P.check_payload(good + ttl_frame(ttl_ms), 2, 1 << 20)
        assert isinstance(err, ProtocolError)
        assert f"record 1 at payload offset {len(good)}" in str(err) and f"ttl of {ttl_ms} ms" in str(err)


# -- splitting a payload larger than a segment --------------------------------------------------


@given(record_lists, st.integers(min_value=350, max_value=2000))
def test_split_units_cuts_at_frame_boundaries(recs, max_unit):
    """Units are whole frames, at most max_unit bytes, in order, covering the payload and every record."""
    payload, frames = payload_of(recs)
    units = P.split_units(payload, len(recs), max_unit)
    assert units[0][0] == 0 and units[-1][1] == len(payload)
    assert sum(c for _, _, c in units) == len(recs)
    for (s, e, c), nxt in zip(units, units[1:] + [(len(payload), 0, 0)]):
        assert e == nxt[0]
        assert e - s <= max_unit
        assert P.check_payload(payload[s:e], c, max_unit) is None


@given(
    record_lists,
    st.integers(min_value=350, max_value=2000),
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=32, max_value=4000),
)
def test_positions_from_runs_follow_frame_lengths(recs, max_unit, seg, off):
    """The client's positions from the writer's runs are each frame's offset in its unit's segment."""
    payload, frames = payload_of(recs)
    runs = []
    for i, (_s, _e, c) in enumerate(P.split_units(payload, len(recs), max_unit)):
        runs += [seg + i, off, c]
    positions = P.positions_from_runs(runs, [len(f) for f in frames])
    assert len(positions) == len(recs)
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert positions[0] == Position(seg, off)


def test_positions_from_runs_rejects_a_mismatch():
    with pytest.raises(ProtocolError):
        P.positions_from_runs([0, 32, 2], [10])
    with pytest.raises(ProtocolError):
        P.positions_from_runs([0, 32, 1], [10, 10])
    with pytest.raises(ProtocolError):
        P.positions_from_runs([0, 32], [10])


# -- replies and errors ---------------------------------------------------------------------------


def test_ok_reply_round_trip():
    r = P.decode_reply(P.encode_ok(5, [0, 32, 3]))
    assert (r.request_id, r.ok, r.result) == (5, True, [0, 32, 3])


@pytest.mark.parametrize(
    "cls",
    [
        WalError,
        CorruptionError,
        WalLockedError,
        WalClosedError,
        RecordTooLargeError,
        WalIOError,
        WriterUnavailableError,
        ProtocolError,
    ],
)
def test_error_replies_carry_the_class(cls):
    r = P.decode_reply(P.encode_error(8, cls("what went wrong")))
    assert r.request_id == 8 and not r.ok
    assert type(r.result) is cls and "what went wrong" in str(r.result)


def test_unknown_errors_travel_as_wal_error():
    r = P.decode_reply(P.encode_error(1, ValueError("odd")))
    assert type(r.result) is WalError and "ValueError: odd" in str(r.result)
    assert type(P.error_from_wire("NoSuchError", "x")) is WalError


@given(st.binary(max_size=64))
def test_decode_reply_raises_only_protocol_error(data):
    """decode_reply returns a Reply or raises ProtocolError, whatever the bytes."""
    try:
        P.decode_reply(data)
    except ProtocolError:
        pass


def test_position_result():
    assert P.position_result([3, 40]) == Position(3, 40)
    with pytest.raises(ProtocolError):
        P.position_result([3])


# -- the fixed-shape hot paths ------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**32 - 1))
def test_the_fixed_append_header_is_plain_msgpack(rid, count):
    """encode_append's fixed shape is an ordinary msgpack header, and append_header reads it back."""
    head = P.encode_append(rid, count)
    assert msgpack.unpackb(head) == [P.VERSION, P.Op.APPEND, rid, count]
    assert P.append_header(head) == (rid, count)
    assert P.decode_request([head, b"x"]) == P.Append(rid, count, b"x")


@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**32 - 1))
def test_other_encodings_of_an_append_header_take_the_general_path(rid, count):
    """A compact msgpack encoding of the same header is not the fixed shape, but still a valid APPEND."""
    head = msgpack.packb([P.VERSION, int(P.Op.APPEND), rid, count])
    if len(head) != P.APPEND_HEADER_SIZE:
        assert P.append_header(head) is None
    assert P.decode_request([head, b"x"]) == P.Append(rid, count, b"x")


@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.binary(min_size=1, max_size=100),
)
def test_a_compact_append_is_the_fixed_header_then_the_payload(rid, count, payload):
    """One frame: encode_append's header, then the frames; decode_request takes it as the two-frame APPEND."""
    msg = P.encode_append(rid, count) + payload
    assert P.compact_append(msg) == (rid, count)
    req = P.decode_request([msg])
    assert type(req) is P.Append and (req.request_id, req.record_count) == (rid, count)
    assert bytes(req.payload) == payload


def test_a_lone_frame_that_is_not_a_compact_append_stays_a_control_request_or_an_error():
    assert P.compact_append(P.encode_request(P.Op.SYNC, 3)) is None
    assert P.decode_request([P.encode_request(P.Op.SYNC, 3)]) == P.Control(3, P.Op.SYNC)
    header_alone = P.encode_append(4, 1)  # no payload: not compact, and an APPEND needs one
    assert P.compact_append(header_alone) is None
    assert isinstance(P.decode_request([header_alone]), P.BadRequest)
    other_shape = msgpack.packb([P.VERSION, int(P.Op.APPEND), 4, 1]) + b"frames"
    assert P.compact_append(other_shape) is None
    assert isinstance(P.decode_request([other_shape]), P.BadRequest)


@given(st.binary(max_size=60))
def test_compact_append_never_raises(data):
    h = P.compact_append(data)
    assert h is None or P.decode_request([data]) == P.Append(h[0], h[1], memoryview(data)[P.APPEND_HEADER_SIZE :])


@given(st.binary(max_size=40))
def test_append_header_never_raises(data):
    h = P.append_header(data)
    assert h is None or P.decode_request([data, b"x"]) == P.Append(h[0], h[1], b"x")


@given(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=1, max_value=2**32 - 1),
)
def test_the_fixed_run_reply_equals_the_general_one(rid, seg, off, count):
    """encode_run_ok is encode_ok for one run, byte shapes aside; run_reply reads it without msgpack."""
    data = P.encode_run_ok(rid, seg, off, count)
    assert P.decode_reply(data) == P.decode_reply(P.encode_ok(rid, [seg, off, count]))
    assert P.run_reply(data) == (rid, seg, off, count)
    # decode_reply's struct fast path gives what msgpack reads from the same bytes
    assert P.decode_reply(data) == P.Reply(rid, True, msgpack.unpackb(data)[3])


def test_run_reply_leaves_every_other_reply_to_msgpack():
    assert P.run_reply(P.encode_ok(5, [0, 32, 1])) is None  # compact encoding
    assert P.run_reply(P.encode_error(5, WalIOError("disk"))) is None
    assert P.run_reply(P.encode_ok(5, [0, 32, 1, 1, 32, 1])) is None  # several runs
    damaged = bytearray(P.encode_run_ok(5, 0, 32, 1))
    damaged[11] = P.ERR
    assert P.run_reply(bytes(damaged)) is None
