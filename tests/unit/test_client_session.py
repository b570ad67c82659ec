"""The client's request bookkeeping (pure): in-flight limit, coalescing, completions, retries."""

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nori_wal import Position, ProtocolError, Record, RecordTooLargeError, WalIOError, WriterUnavailableError
from nori_wal import protocol as P
from nori_wal.client.session import SAFE_FRAME_BYTES, Session, chunk_frames
from nori_wal.codec import encode_record


def frame(i, size=100):
    return encode_record(Record.put(b"k%d" % i, b"v" * size))


def header(frames):
    return msgpack.unpackb(frames[0])


def ok_runs(rid, seg, off, count):
    return P.encode_ok(rid, [seg, off, count])


def test_one_append_is_one_request_and_gets_its_position():
    s = Session()
    f = frame(0)
    s.queue_append((f,), "w0")
    out = s.take(0.0)
    assert out is not None and out[1] == f
    version, op, rid, count = header(out)
    assert (version, op, count) == (P.VERSION, P.Op.APPEND, 1)
    assert s.take(0.0) is None
    [c] = s.complete(ok_runs(rid, 0, 32, 1))
    assert (c.waiter, c.value, c.error) == ("w0", [Position(0, 32)], None)
    assert s.idle


def test_queued_appends_are_coalesced_in_order():
    s = Session()
    frames = [frame(i, 10 * i) for i in range(5)]
    for i, f in enumerate(frames):
        s.queue_append((f,), i)
    out = s.take(0.0)
    assert out[1] == b"".join(frames) and header(out)[3] == 5
    done = s.complete(ok_runs(header(out)[2], 2, 100, 5))
    assert [c.waiter for c in done] == [0, 1, 2, 3, 4]
    off = 100
    for c, f in zip(done, frames):
        assert c.value == [Position(2, off)]
        off += len(f)


def test_in_flight_limit_holds_back_and_then_coalesces():
    s = Session(max_in_flight=2)
    for i in range(2):
        s.queue_append((frame(i),), i)
        assert s.take(0.0) is not None
    for i in range(2, 6):
        s.queue_append((frame(i),), i)
    assert s.take(0.0) is None and s.in_flight == 2 and s.queued == 4
    s.complete(ok_runs(1, 0, 32, 1))
    out = s.take(0.0)
    assert header(out)[3] == 4 and s.queued == 0


def test_coalescing_stops_at_the_byte_limit_and_at_solo_entries():
    s = Session(coalesce_bytes=350)
    for i in range(3):
        s.queue_append((frame(i, 100),), i)  # ~110 bytes each: three fit
    s.queue_append((frame(3, 100),), 3)
    s.queue_append((frame(4, 10), frame(5, 10)), 4, solo=True)
    s.queue_append((frame(6, 10),), 6)
    counts = []
    while (out := s.take(0.0)) is not None:
        counts.append(header(out)[3])
    assert counts == [3, 1, 2, 1]


def test_large_appends_are_never_coalesced():
    s = Session(coalesce_bytes=1000)
    s.queue_append((frame(0, 10),), 0)
    s.queue_append((frame(1, 2000),), 1)
    s.queue_append((frame(2, 10),), 2)
    assert [header(s.take(0.0))[3] for _ in range(3)] == [1, 1, 1]


def test_a_batch_gets_all_its_positions_across_runs():
    s = Session()
    frames = [frame(i, 50) for i in range(4)]
    s.queue_append(frames, "batch", solo=True)
    out = s.take(0.0)
    rid = header(out)[2]
    [c] = s.complete(P.encode_ok(rid, [0, 32, 2, 1, 32, 2]))
    a = len(frames[0])
    assert c.value == [Position(0, 32), Position(0, 32 + a), Position(1, 32), Position(1, 32 + len(frames[2]))]


def test_stale_replies_are_ignored():
    s = Session()
    assert s.complete(ok_runs(999, 0, 32, 1)) == []


def test_errors_fail_every_coalesced_waiter_with_the_same_class():
    s = Session()
    for i in range(3):
        s.queue_append((frame(i),), i)
    rid = header(s.take(0.0))[2]
    done = s.complete(P.encode_error(rid, WalIOError("fsync failed")))
    assert [c.waiter for c in done] == [0, 1, 2]
    assert all(isinstance(c.error, WalIOError) for c in done)


@pytest.mark.parametrize("err", [RecordTooLargeError("too big"), ProtocolError("bad")])
def test_a_rejected_coalesced_request_fails_each_append_and_is_not_resent(err):
    """Rule 3: resending part of it would put it behind requests sent after it."""
    s = Session()
    for i in range(3):
        s.queue_append((frame(i),), i)
    rid = header(s.take(0.0))[2]
    done = s.complete(P.encode_error(rid, err))
    assert [c.waiter for c in done] == [0, 1, 2] and all(type(c.error) is type(err) for c in done)
    assert s.idle


def test_a_frame_larger_than_every_writer_takes_goes_alone_until_one_that_large_was_acknowledged():
    """Rule 3: a frame the writer may refuse is never coalesced, so its refusal answers it alone."""
    s = Session()
    small, big = frame(0), frame(1, size=SAFE_FRAME_BYTES)
    assert len(big) > SAFE_FRAME_BYTES
    for f, w in ((small, "a"), (big, "big"), (small, "b"), (small, "c")):
        s.queue_append((f,), w)
    requests = [s.take(0.0) for _ in range(3)]
    assert [len(r[1]) for r in requests] == [len(small), len(big), 2 * len(small)]
    [refused] = s.complete(P.encode_error(header(requests[1])[2], RecordTooLargeError("too big")))
    assert refused.waiter == "big" and isinstance(refused.error, RecordTooLargeError)
    s.queue_append((big,), "big2")
    s.queue_append((small,), "d")
    rid = header(s.take(0.0))[2]  # still alone: nothing that large was acknowledged yet
    assert s.take(0.0)[1] == small
    s.complete(ok_runs(rid, 0, 32, 1))
    for f, w in ((big, "x"), (big, "y")):
        s.queue_append((f,), w)
    assert s.take(0.0)[1] == big + big  # acknowledged once: now coalesced


def test_control_requests_bypass_the_in_flight_limit():
    s = Session(max_in_flight=1)
    s.queue_append((frame(0),), "a")
    s.take(0.0)
    out = s.control(P.Op.POSITION, "pos", 0.0)
    assert len(out) == 1 and header(out)[1] == P.Op.POSITION
    [c] = s.complete(P.encode_ok(header(out)[2], [1, 64]))
    assert c.value == Position(1, 64)


def test_malformed_ok_results_become_protocol_errors():
    s = Session()
    out = s.control(P.Op.DELETE, "d", 0.0)
    [c] = s.complete(P.encode_ok(header(out)[2], "three"))
    assert isinstance(c.error, ProtocolError)
    s.queue_append((frame(0),), "a")
    rid = header(s.take(0.0))[2]
    [c] = s.complete(P.encode_ok(rid, [0, 32, 2]))
    assert isinstance(c.error, ProtocolError)


def test_unparseable_replies_raise_protocol_error():
    with pytest.raises(ProtocolError):
        Session().complete(b"\xc1garbage")


def test_fail_all_reaches_in_flight_and_queued_waiters():
    s = Session(max_in_flight=1)
    s.queue_append((frame(0),), "sent")
    s.take(0.0)
    s.queue_append((frame(1),), "queued")
    s.control(P.Op.SYNC, "sync", 0.0)
    done = s.fail_all(WriterUnavailableError("gone"))
    assert sorted(c.waiter for c in done) == ["queued", "sent", "sync"]
    assert s.idle


def test_oversized_appends_are_refused_before_sending(monkeypatch):
    monkeypatch.setattr(P, "MAX_PAYLOAD_BYTES", 50)
    with pytest.raises(RecordTooLargeError):
        Session().queue_append((frame(0, 100),), "x")


def test_oldest_sent_at():
    s = Session()
    assert s.oldest_sent_at() is None
    s.control(P.Op.SYNC, "a", 5.0)
    s.control(P.Op.SYNC, "b", 7.0)
    assert s.oldest_sent_at() == 5.0


@given(
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=50), st.integers(min_value=1, max_value=1000)
)
def test_chunk_frames_keeps_order_and_bounds(sizes, limit):
    """Chunks concatenate back to the batch; a chunk exceeds the limit only when it is one frame."""
    frames = [b"x" * n for n in sizes]
    chunks = chunk_frames(frames, limit)
    assert [f for c in chunks for f in c] == frames
    assert all(sum(map(len, c)) <= limit or len(c) == 1 for c in chunks)


@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=400), st.booleans()), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=4),
)
def test_every_append_is_answered_once_in_queue_order(appends, max_in_flight):
    """Whatever the sizes, solo flags and limit: each waiter gets its positions once, in the order queued."""
    s = Session(max_in_flight=max_in_flight, coalesce_bytes=1000)
    for i, (size, solo) in enumerate(appends):
        s.queue_append((frame(i, size),), i, solo=solo)
    answered = []
    off = 32
    while not s.idle:
        outs = []
        while (out := s.take(0.0)) is not None:
            outs.append(out)
        for out in outs:
            n = header(out)[3]
            for c in s.complete(ok_runs(header(out)[2], 0, off, n)):
                assert c.error is None
                answered.append(c.waiter)
            off += len(out[1])
    assert answered == list(range(len(appends)))


# -- hardening: batch chunk checks, split-batch errors, SYNC's waiters, Record input types --------------


def test_check_chunks_refuses_before_anything_is_queued():
    from nori_wal.client.session import check_chunks

    check_chunks([[b"x" * 10], [b"y" * 10]])
    with pytest.raises(RecordTooLargeError, match="nothing of the batch was sent"):
        check_chunks([[b"x" * 10], [b"y" * (P.MAX_PAYLOAD_BYTES + 1)]])


def test_split_batch_error_says_how_many_records_were_acknowledged():
    from nori_wal.client.session import split_batch_error

    cause = RecordTooLargeError("writer: too big")
    err = split_batch_error([15, 15, 3], [None, cause, None])
    assert type(err) is RecordTooLargeError and err.__cause__ is cause
    msg = str(err)
    assert "33 records was split into 3 requests" in msg and "not one unit" in msg
    assert "the first 15 record(s) (requests 1-1) were acknowledged" in msg and "request 2 (15 records)" in msg
    assert "3 record(s) of later requests were acknowledged too" in msg and "writer: too big" in msg
    first = split_batch_error([15, 2], [WriterUnavailableError("gone"), WriterUnavailableError("gone")])
    assert type(first) is WriterUnavailableError and "the first 0 record(s)" in str(first)


def test_waiters_lists_every_outstanding_append_but_no_control():
    s: Session[str] = Session(max_in_flight=1)
    s.queue_append([b"a"], "a")
    s.queue_append([b"b" * (2 << 20)], "b")
    assert s.take(0.0) is not None
    s.control(P.Op.INFO, "info", 0.0)
    assert s.waiters() == ["a", "b"]  # in flight, then queued; never the control's
    s.fail_all(WriterUnavailableError("x"))
    assert s.waiters() == []


@pytest.mark.parametrize("bad", [5, 0, "k", None, 1.5, [1, 2]])
def test_record_refuses_what_is_not_bytes_like(bad):
    from datetime import timedelta

    with pytest.raises(TypeError, match="Record key must be bytes"):
        Record.put(bad, b"v")
    with pytest.raises(TypeError, match="Record value must be bytes"):
        Record.put(b"k", bad)
    with pytest.raises(TypeError, match="Record key must be bytes"):
        Record.delete(bad)
    with pytest.raises(TypeError, match="Record value must be bytes"):
        Record.put_with_ttl(b"k", bad, timedelta(seconds=1))


def test_record_accepts_bytes_likes():
    import array

    r = Record.put(bytearray(b"k"), memoryview(b"abcd")[::2])
    assert r.key == b"k" and r.value == b"ac" and type(r.key) is bytes and type(r.value) is bytes
    assert Record.put(b"k", array.array("B", [1, 2])).value == b"\x01\x02"
