"""The writer's group builder (pure): a drained batch of requests into one write and its replies."""

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from nori_wal import Position, ProtocolError, Record, RecordTooLargeError
from nori_wal import protocol as P
from nori_wal.codec import encode_record
from nori_wal.segment import max_frame_size
from nori_wal.writer_proc.group import GroupBuilder, Pending, Ticket, acks_across_roll, acks_in_place

MAX_FRAME = max_frame_size(64 * 1024)
ID = b"\x00peer"


def frames_of(n, value=b"v"):
    return [encode_record(Record.put(b"k%d" % i, value)) for i in range(n)]


def error_of(reply):
    r = P.decode_reply(reply)
    assert not r.ok
    return r.request_id, r.result


def test_a_compact_append_joins_the_group_as_one_unit():
    g = GroupBuilder(MAX_FRAME)
    frame = encode_record(Record.put(b"k", b"v"))
    assert g.add(ID, P.encode_append(7, 1) + frame, None) is None
    assert [bytes(u) for u in g.units] == [frame]
    assert (g.counts, g.pending, g.records, g.nbytes) == ([1], [Pending(ID, 7, 1, len(frame), 1)], 1, len(frame))


def test_header_and_payload_frames_join_the_group_in_order():
    g = GroupBuilder(MAX_FRAME)
    a, b = b"".join(frames_of(3)), b"".join(frames_of(2, b"w"))
    assert g.add(ID, P.encode_append(1, 3), a) is None
    assert g.add(b"\x00other", msgpack.packb([P.VERSION, 1, 2, 2]), b) is None  # any msgpack encoding
    assert [bytes(u) for u in g.units] == [a, b]
    assert g.counts == [3, 2]
    assert [(p.ident, p.request_id) for p in g.pending] == [(ID, 1), (b"\x00other", 2)]
    assert (g.records, g.nbytes) == (5, len(a) + len(b))


def test_a_control_request_is_returned_and_adds_nothing():
    g = GroupBuilder(MAX_FRAME)
    step = g.add(ID, P.encode_request(P.Op.SYNC, 9), None)
    assert step == P.Control(9, P.Op.SYNC)
    step = g.add(ID, P.encode_request(P.Op.DELETE, 10, 3, 0), None)
    assert step == P.Control(10, P.Op.DELETE, Position(3, 0))
    assert not g.pending and not g.units


def test_bad_requests_get_an_error_reply_and_add_nothing():
    g = GroupBuilder(MAX_FRAME)
    payload = b"".join(frames_of(2))
    cases = [
        ((P.encode_append(1, 2), payload, 3), (0, ProtocolError, "1 or 2 frames, got 3")),
        ((b"\xc1garbage", None, 0), (0, ProtocolError, "not msgpack")),
        ((P.encode_append(4, 1), payload, 0), (4, ProtocolError, "claims 1 records but the payload holds 2")),
        ((P.encode_append(5, 2), payload[:-1], 0), (5, ProtocolError, "cut off")),
        ((P.encode_request(P.Op.SYNC, 6), payload, 0), (6, ProtocolError, "takes no payload frame")),
    ]
    for (head, body, nframes), (rid, cls, text) in cases:
        reply = g.add(ID, head, body, nframes)
        assert isinstance(reply, bytes)
        got_rid, err = error_of(reply)
        assert got_rid == rid and isinstance(err, cls) and text in str(err), (head, err)
    assert not g.pending and not g.units and g.nbytes == 0


def test_a_frame_larger_than_a_segment_holds_is_refused():
    g = GroupBuilder(MAX_FRAME)
    big = encode_record(Record.put(b"k", b"x" * MAX_FRAME))
    rid, err = error_of(g.add(ID, P.encode_append(3, 1), big))
    assert rid == 3 and isinstance(err, RecordTooLargeError)


def test_a_batch_larger_than_a_segment_is_cut_into_units_at_frames():
    g = GroupBuilder(MAX_FRAME)
    frames = frames_of(40, b"x" * 4000)
    payload = b"".join(frames)
    assert len(payload) > MAX_FRAME
    assert g.add(ID, P.encode_append(1, 40), payload) is None
    (p,) = g.pending
    assert p.units == len(g.units) > 1 and sum(g.counts) == 40
    assert b"".join(bytes(u) for u in g.units) == payload
    assert all(len(u) <= MAX_FRAME for u in g.units)


def test_acks_in_place_give_each_request_its_run():
    g = GroupBuilder(MAX_FRAME)
    a, b = b"".join(frames_of(2)), b"".join(frames_of(1))
    g.add(ID, P.encode_append(1, 2), a)
    g.add(b"\x00q", P.encode_append(2, 1), b)
    tickets, end = acks_in_place(g.pending, 5, 100, 1.5)
    assert tickets == [
        Ticket(ID, 1, P.encode_run_ok(1, 5, 100, 2), 1.5),
        Ticket(b"\x00q", 2, P.encode_run_ok(2, 5, 100 + len(a), 1), 1.5),
    ]
    assert end == Position(5, 100 + len(a) + len(b))


def test_acks_across_a_roll_give_a_run_per_unit():
    g = GroupBuilder(MAX_FRAME)
    small = b"".join(frames_of(1))
    g.add(ID, P.encode_append(1, 1), small)
    g.add(ID, P.encode_append(2, 40), b"".join(frames_of(40, b"x" * 4000)))
    n = len(g.units)
    firsts = [(1, 64)] + [(2 + i, 32) for i in range(n - 1)]  # each split unit in a segment of its own
    tickets, end = acks_across_roll(g, firsts, 0.0)
    assert tickets[0] == Ticket(ID, 1, P.encode_run_ok(1, 1, 64, 1), 0.0)
    runs = P.decode_reply(tickets[1].reply).result
    assert runs == [x for i in range(1, n) for x in (firsts[i][0], firsts[i][1], g.counts[i])]
    assert end == Position(firsts[-1][0], firsts[-1][1] + len(g.units[-1]))


requests = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("bad"), st.integers(1, 5)),
        st.tuples(st.just("sync"), st.just(0)),
    ),
    max_size=30,
)


@given(requests)
def test_every_request_gets_one_outcome_and_the_group_keeps_the_valid_appends_in_order(reqs):
    """Invariant: each request joins the group, gets an error reply or ends the group; nothing else."""
    g = GroupBuilder(MAX_FRAME)
    written, expected = [], []
    for rid, (kind, n) in enumerate(reqs, 1):
        payload = b"".join(frames_of(n, b"%d" % rid))
        count = n if kind != "bad" else n + 1
        if kind == "sync":
            step = g.add(ID, P.encode_request(P.Op.SYNC, rid), None)
            assert step == P.Control(rid, P.Op.SYNC)
            written += [bytes(u) for u in g.units]
            g = GroupBuilder(MAX_FRAME)
            continue
        step = g.add(ID, P.encode_append(rid, count) + payload, None)
        if kind == "append":
            assert step is None
            expected.append(payload)
        else:
            assert error_of(step)[0] == rid
    written += [bytes(u) for u in g.units]
    assert written == expected
