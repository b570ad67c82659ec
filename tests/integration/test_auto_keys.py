"""A retrying client's automatic keys: their own, shorter retention, so they never cap sustained appends.

A real writer process whose ``dedupe_max_keys`` is tiny takes far more
automatically keyed records than that; caller keys still hit the cap; a
retry of an automatically keyed record is still answered with the original,
also after the writer is SIGKILLed and restarted (the rebuild restores them).
"""

from __future__ import annotations

import pytest

from nori_wal import DedupeCapacityError, Record, WalClient, WalConfig, open_reader
from nori_wal.dedupe import is_auto_key


@pytest.mark.timeout(120)
def test_automatic_keys_outnumber_dedupe_max_keys_and_retries_still_dedupe(wal_dir, spawn_writer):
    config = WalConfig(wal_dir, max_segment_size=256 * 1024, dedupe_max_keys=50)
    writer = spawn_writer(config)
    with WalClient.for_dir(wal_dir, delivery_timeout=30.0) as client:
        for b in range(30):
            client.append_batch([Record.put(b"k", b"batch %d.%d" % (b, i)) for i in range(100)])
        for i in range(300):
            client.append(Record.put(b"k", b"one %d" % i))
        pending = [client.submit(Record.put(b"k", b"sub %d" % i)) for i in range(200)]
        [p.result() for p in pending]
        assert client.info()["dedupe_keys"] >= 3500  # all of them remembered, 70 times dedupe_max_keys
    with WalClient.for_dir(wal_dir) as client:  # caller keys: still capped at dedupe_max_keys
        client.append_batch([Record.put(b"c", b"c").with_idempotency_key(b"task-%d" % i) for i in range(50)])
        with pytest.raises(DedupeCapacityError, match="dedupe_max_keys"):
            client.append(Record.put(b"c", b"c").with_idempotency_key(b"task-50"))
    with open_reader(wal_dir) as r:
        written = [(rec, pos) for rec, pos in r if rec.idempotency_key is not None and is_auto_key(rec.idempotency_key)]
    assert len(written) == 3500 and len({rec.idempotency_key for rec, _ in written}) == 3500
    sample = written[::7]

    def retry_all() -> None:  # what a client's own retry sends: the same records, the same keys
        with WalClient.for_dir(wal_dir) as client:
            res = client.append_batch_ex([rec for rec, _ in sample])
            assert all(r.duplicate for r in res) and [r.position for r in res] == [p for _, p in sample]
            one = client.append_ex(sample[-1][0])
            assert one.duplicate and one.position == sample[-1][1]

    retry_all()
    writer.kill()
    spawn_writer(config)  # the rebuild on open restores automatic keys within their window
    retry_all()
    with open_reader(wal_dir) as r:
        assert sum(1 for rec, _ in r if rec.idempotency_key is not None and is_auto_key(rec.idempotency_key)) == 3500


def test_a_delivery_timeout_longer_than_any_writer_remembers_is_refused(wal_dir):
    with pytest.raises(ValueError, match="at most 120 s"):
        WalClient.for_dir(wal_dir, delivery_timeout=121.0)
