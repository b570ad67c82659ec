"""The shipper's pure parts: the publish window, the commit clock, the message mapping, subject matching."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nori_wal import Compression, Position, Record
from nori_wal.ship.inflight import CommitClock, InFlight
from nori_wal.ship.mapping import (
    KEY,
    LOG,
    BadMessageError,
    from_message,
    message_id,
    position_of,
    subject_matches,
    to_message,
)
from nori_wal.ship.stream import AckError, parse_ack

LOG_ID = "0123456789abcdef0123456789abcdef"


def positions(n: int) -> list[Position]:
    return [Position(i // 5, 32 + (i % 5) * 40) for i in range(n)]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_committable_is_the_highest_position_with_every_predecessor_acked(data: st.DataObject) -> None:
    """Any interleaving of sends and out-of-order acks: committable is exactly the contiguous acked prefix."""
    limit = data.draw(st.integers(1, 8))
    total = data.draw(st.integers(0, 40))
    first_seq = data.draw(st.integers(1, 10**6))
    window: InFlight[int] = InFlight(limit, first_seq)
    pos = positions(total)
    sent: list[int] = []
    acked: set[int] = set()
    moved_total = 0
    while len(acked) < total:
        unacked = [s for s in sent if s not in acked]
        can_send = len(sent) < total and window.room > 0
        if can_send and (not unacked or data.draw(st.booleans())):
            seq = window.send(pos[len(sent)], len(sent))
            assert seq == first_seq + len(sent)
            sent.append(seq)
        else:
            seq = data.draw(st.sampled_from(unacked))
            moved_total += window.ack(seq)
            acked.add(seq)
            assert window.ack(seq) == 0  # a repeated ack changes nothing
        prefix = 0
        while prefix < len(sent) and sent[prefix] in acked:
            prefix += 1
        assert window.committable == (pos[prefix - 1] if prefix else None)
        assert moved_total == prefix
        waiting = [i for i, s in enumerate(sent) if i >= prefix]  # sent, not yet committable
        assert window.oldest() == (waiting[0] if waiting else None)
        assert all(window.get(sent[i]) == i for i in waiting)
        assert all(window.get(sent[i]) is None for i in range(prefix))
        assert 0 <= window.in_flight <= limit and window.room <= limit
        assert window.in_flight == len(sent) - len(acked)
    assert window.room == limit


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_reset_returns_everything_not_committable_in_order(data: st.DataObject) -> None:
    """After a failure, reset hands back every send past committable, in position order, and renumbers."""
    n = data.draw(st.integers(1, 20))
    window: InFlight[int] = InFlight(32)
    pos = positions(n)
    seqs = [window.send(p, i) for i, p in enumerate(pos)]
    for s in data.draw(st.lists(st.sampled_from(seqs), unique=True)):
        window.ack(s)
    before = window.committable
    redo = window.reset(next_seq=500)
    done = 0 if before is None else pos.index(before) + 1
    assert redo == [(p, i) for i, p in enumerate(pos)][done:]
    assert window.committable == before and window.in_flight == 0 and window.room == 32
    assert window.ack(seqs[-1]) == 0  # an old session's ack is ignored
    if redo:
        assert window.send(redo[0][0], redo[0][1]) == 500  # re-sent from the first one not committable


def test_window_refuses_out_of_order_positions_and_overflow() -> None:
    window: InFlight[None] = InFlight(2)
    window.send(Position(0, 100), None)
    with pytest.raises(ValueError, match="positions must increase"):
        window.send(Position(0, 100), None)
    window.send(Position(0, 200), None)
    with pytest.raises(OverflowError):
        window.send(Position(0, 300), None)
    with pytest.raises(ValueError):
        InFlight(0)


def test_skip_counts_as_acked_and_only_before_any_send() -> None:
    window: InFlight[None] = InFlight(4)
    window.skip(Position(0, 32))
    window.skip(Position(0, 64))
    assert window.committable == Position(0, 64)
    seq = window.send(Position(0, 96), None)
    with pytest.raises(ValueError):
        window.skip(Position(0, 128))
    assert window.ack(seq) == 1 and window.committable == Position(0, 96)


def test_acks_are_read_without_a_parse_and_refusals_raise() -> None:
    """parse_ack: the common answers by their bytes; errors, "no responders" and junk raise (transient)."""
    assert parse_ack(b'{"stream":"S","seq":7}') is False
    assert parse_ack(b'{"stream":"S","seq":7,"duplicate":true}') is True
    assert parse_ack(b'{"seq":7,"stream":"S","duplicate":true}') is True  # another field order: parsed
    assert parse_ack(b'{"stream":"a\\"error\\"","seq":7}') is False  # a marker inside a (JSON-escaped) name
    pytest.importorskip("nats")
    import nats.js.errors as jse

    wrong = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 5"},"stream":"S","seq":0}'
    with pytest.raises(jse.APIError, match="wrong last sequence"):
        parse_ack(wrong)
    with pytest.raises(jse.NoStreamResponseError):
        parse_ack(b"", {"Status": "503"})
    with pytest.raises(AckError, match="unexpected answer"):
        parse_ack(b"-ERR junk")


def test_commit_clock_batches_by_count_and_by_time() -> None:
    clock = CommitClock(every=3, interval=0.5)
    assert not clock.due(0.0)
    clock.advanced(2, now=10.0)
    assert not clock.due(10.1)
    clock.advanced(1, now=10.2)
    assert clock.due(10.2)  # three records
    clock.committed()
    assert not clock.due(100.0)
    clock.advanced(1, now=20.0)
    assert not clock.due(20.4) and clock.due(20.5)  # half a second after the first uncommitted ack
    clock.advanced(0, now=30.0)


records = st.builds(
    lambda key, value, kind, ttl, comp: (
        Record.delete(key)
        if kind == 0
        else (Record.put_with_ttl(key, value, timedelta(milliseconds=ttl)) if kind == 1 else Record.put(key, value))
    ).with_compression(comp if kind != 0 else Compression.NONE),
    st.binary(max_size=40),
    st.binary(max_size=200),
    st.integers(0, 2),
    st.integers(0, 10**9),
    st.sampled_from(list(Compression)),
)


@settings(max_examples=300, deadline=None)
@given(records, st.integers(0, 2**40), st.integers(32, 2**31))
def test_mapping_round_trips(record: Record, segment: int, offset: int) -> None:
    """from_message(to_message(r, p, id)) == (r, p, id); headers are ASCII text; the id names log and position."""
    pos = Position(segment, offset)
    msg = to_message(record, pos, LOG_ID)
    assert from_message(msg.headers, msg.payload) == (record, pos, LOG_ID)
    assert msg.payload == bytes(record.value)
    assert msg.headers["Nats-Msg-Id"] == message_id(LOG_ID, pos) == f"{LOG_ID}:{segment}:{offset}"
    assert all(v.isascii() and "\n" not in v for v in msg.headers.values())
    assert position_of(msg.headers, LOG_ID) == pos
    assert position_of(msg.headers, "f" * 32) is None  # another log's message
    assert set(msg.headers) <= {"Nats-Msg-Id", KEY, "Nori-Tombstone", "Nori-TTL-Ms", "Nori-Compression"}
    first_mapping = {**msg.headers, LOG: LOG_ID, "Nori-Position": str(pos)}  # what shippers sent before
    assert from_message(first_mapping, msg.payload) == (record, pos, LOG_ID)
    assert position_of(first_mapping, LOG_ID) == pos


def test_messages_of_other_publishers_name_no_position() -> None:
    assert position_of({"Nats-Msg-Id": "bare-17"}, LOG_ID) is None
    assert position_of({"Nats-Msg-Id": "f" * 32 + ":1:32"}, LOG_ID) is None
    assert position_of({}, LOG_ID) is None and position_of(None, LOG_ID) is None
    with pytest.raises(BadMessageError, match="not a message shipped by nori-wal"):
        from_message({"Nats-Msg-Id": "bare-17"}, b"v")


def test_bad_messages_name_the_header() -> None:
    good = to_message(Record.put(b"k", b"v"), Position(1, 32), LOG_ID).headers
    with pytest.raises(BadMessageError, match=LOG):
        from_message({}, b"")
    with pytest.raises(BadMessageError, match=KEY):
        from_message({**good, KEY: "***"}, b"v")
    with pytest.raises(BadMessageError, match="Nats-Msg-Id"):
        from_message({**good, "Nats-Msg-Id": f"{LOG_ID}:x"}, b"v")
    with pytest.raises(BadMessageError, match="Nori-Position"):  # a message of the first mapping
        from_message({**good, LOG: LOG_ID, "Nori-Position": "x"}, b"v")
    with pytest.raises(BadMessageError, match="Nori-Compression"):
        from_message({**good, "Nori-Compression": "brotli"}, b"v")
    with pytest.raises(BadMessageError, match="Nori-TTL-Ms"):
        from_message({**good, "Nori-TTL-Ms": "soon"}, b"v")


@pytest.mark.parametrize(
    "pattern, subject, ok",
    [
        ("orders", "orders", True),
        ("orders", "orders.x", False),
        ("orders.*", "orders.x", True),
        ("orders.*", "orders", False),
        ("orders.*", "orders.x.y", False),
        ("orders.>", "orders.x.y", True),
        ("orders.>", "orders", False),
        (">", "anything.at.all", True),
        ("*.b", "a.b", True),
        ("*.b", "a.c", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, ok: bool) -> None:
    assert subject_matches(pattern, subject) is ok
