"""The pure parts of exactly-once appends: the keyed frame, the dedupe index, the key file codec."""

from __future__ import annotations

import struct
from datetime import timedelta

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from nori_wal import Compression, Position, Record, WalConfig
from nori_wal.codec import Corrupt, Decoded, decode_record, encode_record
from nori_wal.dedupe import (
    DedupeIndex,
    KeyColumns,
    decode_key_file_entries,
    decode_key_file_head,
    encode_key_file,
    parse_key_file_name,
)
from nori_wal.dedupe_files import keys_in
from nori_wal.errors import DedupeCapacityError, InvalidRecordError
from nori_wal.protocol import check_payload
from nori_wal.scan import Stop, one_plain_frame, scan_frames

idem_keys = st.binary(min_size=1, max_size=128)


# -- the record and its frame -------------------------------------------------------------------


def test_with_idempotency_key_validates_and_equality_includes_it():
    rec = Record.put(b"k", b"v")
    keyed = rec.with_idempotency_key(bytearray(b"task-1"))
    assert keyed.idempotency_key == b"task-1" and type(keyed.idempotency_key) is bytes
    assert rec.idempotency_key is None and keyed != rec
    assert keyed == Record.put(b"k", b"v").with_idempotency_key(b"task-1")
    with pytest.raises(ValueError, match="1..128 bytes, got 0"):
        rec.with_idempotency_key(b"")
    with pytest.raises(ValueError, match="got 129"):
        rec.with_idempotency_key(b"x" * 129)
    with pytest.raises(TypeError, match="idempotency_key must be bytes"):
        rec.with_idempotency_key("task-1")  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError):  # a key set around the validation is refused at encode
        encode_record(rec._replace(idempotency_key=b""))


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(max_size=200),
    value=st.binary(max_size=3000),
    idem=idem_keys,
    tombstone=st.booleans(),
    ttl=st.none() | st.integers(0, 10**9).map(lambda ms: timedelta(milliseconds=ms)),
    comp=st.sampled_from(list(Compression)),
)
def test_a_keyed_frame_reads_back_as_written_and_passes_every_check(key, value, idem, tombstone, ttl, comp):
    rec = Record(key, b"" if tombstone else value, tombstone, ttl, comp).with_idempotency_key(idem)
    frame = encode_record(rec)
    got = decode_record(frame)
    assert isinstance(got, Decoded) and got.record == rec and got.end == len(frame)
    res = scan_frames(frame)
    assert (res.stop, res.valid_end, res.records) == (Stop.END, len(frame), 1)
    assert check_payload(frame, 1, len(frame)) is None  # the writer accepts it
    assert not one_plain_frame(frame, len(frame))  # ... through the full check, not the plain-frame shortcut
    assert keys_in(b"\0" * 32 + frame, 32) == [(32, idem)]


@settings(max_examples=100, deadline=None)
@given(key=st.binary(max_size=50), value=st.binary(max_size=500))
def test_unkeyed_frames_are_unchanged(key, value):
    """Old segments read as before: an unkeyed frame's bytes are what the format always made."""
    frame = encode_record(Record.put(key, value))
    body = bytes([len(key)]) if len(key) < 128 else None
    if body is not None and len(value) < 128:
        body += bytes([len(value), 0]) + key + value
        assert frame == struct.pack("<I", crc32c(body)) + body
    assert decode_record(frame).record.idempotency_key is None  # type: ignore[union-attr]


@pytest.mark.parametrize("id_len", [0, 129, 200, 250])
def test_a_checksummed_frame_with_a_bad_key_block_is_corrupt_everywhere(id_len):
    frame = bytearray(encode_record(Record.put(b"k", b"v" * 300).with_idempotency_key(b"id")))
    block = frame.index(b"\x02id")
    frame[block] = id_len
    frame[:4] = struct.pack("<I", crc32c(bytes(frame[4:])))
    data = bytes(frame)
    assert isinstance(decode_record(data), Corrupt)
    assert "idempotency key block" in decode_record(data).reason  # type: ignore[union-attr]
    assert scan_frames(data).stop is Stop.CORRUPT
    assert check_payload(data, 1, 1 << 20) is not None  # the writer refuses it: never written


def test_config_validates_the_dedupe_fields():
    assert WalConfig().dedupe_window == timedelta(minutes=10)
    with pytest.raises(ValueError, match="dedupe_window"):
        WalConfig(dedupe_window=timedelta(0))
    with pytest.raises(ValueError, match="dedupe_max_keys"):
        WalConfig(dedupe_max_keys=0)


# -- the index ------------------------------------------------------------------------------------

ops = st.lists(
    st.tuples(st.sampled_from(["add", "lookup", "expire"]), st.integers(0, 12), st.integers(0, 40)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, window=st.integers(1, 30), max_keys=st.integers(1, 8))
def test_the_index_answers_as_a_simple_model(ops, window, max_keys):
    """Against a model: a key is remembered exactly while within the window after its (clock-raised) time,
    keeps its first position, and a new key beyond max_keys live keys is refused, changing nothing."""
    index = DedupeIndex(window, max_keys)
    model: dict[bytes, tuple[Position, int]] = {}
    clock = 0
    for n, (op, k, dt) in enumerate(ops):
        clock += dt
        key = b"k%d" % k
        live = {kk: v for kk, v in model.items() if v[1] >= clock - window}
        if op == "add":
            pos = Position(1, n)
            if key in live:
                assert index.add(key, pos, clock) is False
            elif len(live) >= max_keys:
                with pytest.raises(DedupeCapacityError):
                    index.add(key, pos, clock)
            else:
                assert index.add(key, pos, clock) is True
                model[key] = (pos, clock)
        elif op == "lookup":
            assert index.lookup(key, clock) == (live[key][0] if key in live else None)
        else:
            index.expire(clock)
            model = live
            assert len(index) == len(live)
        assert len(index) <= max(max_keys, len(model))


def test_the_index_never_runs_its_clock_backwards():
    index = DedupeIndex(10, 100)
    index.add(b"a", Position(0, 1), 100)
    index.add(b"b", Position(0, 2), 50)  # a clock step back: b is taken as appended at 100
    assert index.lookup(b"b", 109) == Position(0, 2)
    assert index.expire(111) == 2


def test_restore_keeps_the_first_position_and_ignores_the_cap():
    index = DedupeIndex(1000, 1)
    index.restore(b"a", Position(0, 1), 10)
    index.restore(b"b", Position(0, 2), 11)
    index.restore(b"a", Position(1, 9), 12)
    assert len(index) == 2 and index.lookup(b"a", 20) == Position(0, 1)
    assert index.segment_entries(0) == [(b"a", 1, 10), (b"b", 2, 11)] and index.segment_entries(1) == []
    with pytest.raises(DedupeCapacityError, match="dedupe_max_keys"):
        index.add(b"c", Position(1, 3), 20)


# -- key files ------------------------------------------------------------------------------------


def columns(entries: list[tuple[bytes, int, int]]) -> KeyColumns:
    return KeyColumns(*(list(col) for col in zip(*entries))) if entries else KeyColumns([], [], [])


entries_st = st.lists(st.tuples(idem_keys, st.integers(32, 10**6), st.integers(0, 2**62)), max_size=30)


@settings(max_examples=100, deadline=None)
@given(entries=entries_st)
def test_a_key_file_reads_back_only_for_its_own_seal(entries):
    data = encode_key_file(7, 10**6 + 1, 99, columns(entries))
    head = decode_key_file_head(data, 7, 10**6 + 1, 99)
    assert not isinstance(head, str)
    assert decode_key_file_entries(head, data[56:]) == entries
    assert head.newest_ms == max((t for _k, _o, t in entries), default=0)
    for other in [(8, 10**6 + 1, 99), (7, 10**6, 99), (7, 10**6 + 1, 98)]:
        assert isinstance(decode_key_file_head(data, *other), str)


@settings(max_examples=100, deadline=None)
@given(entries=entries_st.filter(bool), flip=st.integers(0, 10**6))
def test_a_damaged_key_file_is_never_used(entries, flip):
    data = bytearray(encode_key_file(7, 10**6 + 1, 99, columns(entries)))
    i = flip % len(data)
    data[i] ^= 0x41
    head = decode_key_file_head(bytes(data[:56]), 7, 10**6 + 1, 99)
    if isinstance(head, str):
        return
    assert isinstance(decode_key_file_entries(head, bytes(data[56:])), str)


def test_key_file_names():
    assert parse_key_file_name("000012.keys") == 12
    for name in ["000012.wal", "12.keys", "000012.keys.tmp", "00001x.keys"]:
        assert parse_key_file_name(name) is None
