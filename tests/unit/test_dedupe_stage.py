"""The writer's keyed-request planning (pure): duplicates across requests, within one, and in the index."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nori_wal import Position, Record
from nori_wal import protocol as P
from nori_wal.client.session import append_results, positions_of
from nori_wal.codec import encode_record
from nori_wal.dedupe import DedupeIndex
from nori_wal.writer_proc.dedupe_stage import WriterKeys
from nori_wal.writer_proc.group import GroupBuilder, acks_keyed

MAX_FRAME = 600  # small: requests are cut into several units


def _record(i: int, key: int | None) -> Record:
    rec = Record.put(b"k%d" % i, b"v" * (i % 5 * 40))
    return rec if key is None else rec.with_idempotency_key(b"key-%d" % key)


def _run_group(keys: WriterKeys, requests: list[list[Record]], start: int) -> tuple[list, int]:
    """Plan, 'write' at segment 0 from ``start`` (unit after unit), remember, reply; results per request."""
    group = GroupBuilder(MAX_FRAME, keys)
    frames = [[encode_record(r) for r in req] for req in requests]
    for rid, fs in enumerate(frames, 1):
        assert group.add(b"p", P.encode_append(rid, len(fs)) + b"".join(fs), None) is None
    assert group.keys is not None
    firsts, off = [], start
    for u, unit in enumerate(group.units):
        firsts.append(Position(0, off))
        group.keys.remember(u, firsts[-1])
        off += len(unit)
    tickets = acks_keyed(group, firsts, 0.0)
    out = []
    for fs, t in zip(frames, tickets):
        reply = P.decode_reply(t.reply)
        out.append(append_results(positions_of(reply.result, [len(f) for f in fs])))
    return out, off


keyed_requests = st.lists(
    st.lists(st.one_of(st.none(), st.integers(0, 6)), min_size=1, max_size=8), min_size=1, max_size=4
).filter(lambda reqs: any(k is not None for req in reqs for k in req))


@settings(max_examples=150, deadline=None)
@given(keyed_requests, keyed_requests)
def test_every_key_is_written_once_and_every_duplicate_gets_the_original(first, second):
    keys = WriterKeys(DedupeIndex(60_000, 1000), clock=lambda: 1_000)
    seen: dict[int, Position] = {}
    written = 0
    start = 32
    for groups in (first, second):  # two groups: the second judged against the index the first filled
        requests = [[_record(i, k) for i, k in enumerate(req)] for req in groups]
        results, start = _run_group(keys, requests, start)
        for req, res in zip(groups, results):
            assert len(res) == len(req)
            for k, r in zip(req, res):
                if k is None:
                    assert not r.duplicate
                    written += 1
                elif k in seen:
                    assert r == (seen[k], True)
                else:
                    assert not r.duplicate
                    seen[k] = r.position
                    written += 1
    positions = [p for p in seen.values()]
    assert len(set(positions)) == len(positions)
    assert len(keys.index) == len(seen)


def test_a_request_of_duplicates_only_writes_nothing():
    keys = WriterKeys(DedupeIndex(60_000, 1000), clock=lambda: 1_000)
    keys.index.add(b"key-1", Position(3, 100), 1_000)
    group = GroupBuilder(MAX_FRAME, keys)
    frame = encode_record(_record(0, 1))
    assert group.add(b"p", P.encode_append(7, 1) + frame, None) is None
    assert group.units == [] and group.records == 0
    (ticket,) = acks_keyed(group, [], 0.0)
    reply = P.decode_reply(ticket.reply)
    assert reply.result == {"runs": [], "dups": [0, 3, 100]}
    assert append_results(positions_of(reply.result, [len(frame)])) == [(Position(3, 100), True)]


def test_new_keys_past_max_keys_refuse_the_request():
    keys = WriterKeys(DedupeIndex(60_000, 2), clock=lambda: 1_000)
    group = GroupBuilder(MAX_FRAME, keys)
    frames = b"".join(encode_record(_record(i, i)) for i in range(3))
    reply = group.add(b"p", P.encode_append(1, 3) + frames, None)
    assert isinstance(reply, bytes)
    err = P.decode_reply(reply).result
    assert type(err).__name__ == "DedupeCapacityError" and group.units == []
