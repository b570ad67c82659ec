"""Readers hand plain puts out run by run (``codec.put_run``): the runs change nothing their users see.

Iterating gives what ``next_record`` (the rules' path, one record at a time)
gives, on any mix of records, segments and read sizes; an iteration stopped
anywhere (``break``, ``close`` from the loop's body) leaves ``position`` on
the next record, and the next iteration or ``next_record`` starts there:
nothing lost, nothing twice. A consumer stopped inside a run commits and
resumes exactly as anywhere else.
"""

from __future__ import annotations

import tempfile
from itertools import islice
from unittest import mock

from hypothesis import given
from hypothesis import strategies as st

import nori_wal.reader as reader_module
from nori_wal import Compression, FsyncPolicy, Record, Wal, WalConfig, open_consumer, open_reader

keys = st.binary(max_size=3)
plain = st.builds(Record.put, keys, st.binary(max_size=1500))  # what runs are made of
records = st.one_of(
    plain,
    st.builds(lambda k, n: Record.put(k, b"v" * n), keys, st.sampled_from([0, 0x7F, 0x80, 0x3FFF, 0x4000, 70000])),
    st.builds(Record.delete, keys),
    st.builds(lambda k: Record.put_with_ttl(k, b"t", 5), keys),
    st.builds(lambda k: Record.put(k, b"z" * 300).with_compression(Compression.LZ4), keys),
    st.builds(lambda k: Record.put(k, b"i").with_idempotency_key(b"id"), keys),  # (made unique below)
)


def write_log(directory, recs):
    with Wal.open(WalConfig(dir=directory, max_segment_size=131072, fsync_policy=FsyncPolicy.os()))[0] as wal:
        return wal.append_batch(recs) if recs else []


def slow_read(directory):
    out, reader = [], open_reader(directory)
    while (item := reader.next_record()) is not None:
        out.append(item)
    return out


@given(
    st.lists(st.one_of(records, st.lists(plain, max_size=80)), max_size=12),
    st.sampled_from([64, 1000, 1 << 20]),
    st.lists(st.integers(0, 90), max_size=4),
)
def test_iteration_gives_what_next_record_gives_and_stops_anywhere_exactly(parts, read_size, stops):
    """Whatever the records and the read size: the same records and positions; any stop resumes exactly."""
    recs = [r for p in parts for r in (p if isinstance(p, list) else [p])]
    recs = [r.with_idempotency_key(b"id%d" % i) if r.idempotency_key else r for i, r in enumerate(recs)]
    with tempfile.TemporaryDirectory() as d, mock.patch.object(reader_module, "READ_SIZE", read_size):
        want = list(zip(recs, write_log(d, recs)))
        assert slow_read(d) == want
        assert list(open_reader(d)) == want
        got, reader = [], open_reader(d)
        for k in stops:  # an iteration stopped after k records, then next_record once, and on
            got += islice(reader, k)
            if 0 < len(got) < len(want):
                assert reader.position == want[len(got)][1]
            if (item := reader.next_record()) is not None:
                got.append(item)
        got += reader
        assert got == want


def test_close_from_the_loop_body_ends_the_iteration_inside_a_run(tmp_path):
    pos = write_log(tmp_path, [Record.put(b"k", b"v%d" % i) for i in range(200)])
    with open_reader(tmp_path) as reader:
        got = []
        for _, p in reader:
            got.append(p)
            if len(got) == 10:
                reader.close()
        assert got == pos[:10] and reader.position == pos[10]


def test_a_consumer_stopped_inside_a_run_commits_and_resumes_exactly(tmp_path):
    pos = write_log(tmp_path, recs := [Record.put(b"k", b"v%d" % i) for i in range(200)])
    with open_consumer(tmp_path, "idx") as c:
        first = list(islice(c, 10))
        assert first == list(zip(recs[:10], pos[:10]))
        c.commit(pos[9])  # the last one yielded: its end is known without reading
        again = list(islice(c, 5))  # a new iteration starts just after the last record yielded
        assert again == list(zip(recs[10:15], pos[10:15]))
        c.commit(pos[12])  # an earlier one than the last yielded: its end is read from its frame
        got = []
        for item in c:
            got.append(item)
            if len(got) == 3:
                c.close()  # from the loop's body: the iteration ends at its next step
        assert got == list(zip(recs[15:18], pos[15:18]))
    with open_consumer(tmp_path, "idx") as c:
        assert c.committed == pos[12] and next(iter(c)) == (recs[13], pos[13])
