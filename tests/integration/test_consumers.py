"""Consumers end to end: real files, an embedded Wal, a writer process, other processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest

from nori_wal import (
    ConsumerExpiredError,
    CorruptionError,
    FsyncPolicy,
    Position,
    Record,
    RecordsDeletedError,
    Wal,
    WalConfig,
    WalLockedError,
    drop_consumer,
    list_consumers,
    open_consumer,
)
from nori_wal.client import WalClient

DEADLINE = 30.0


def recs(n, size=500, tag=b"k"):
    return [Record.put(tag + b"%d" % i, os.urandom(size)) for i in range(n)]


def small_wal(path, policy=FsyncPolicy.always(), **kw):
    return Wal.open(WalConfig(dir=path, max_segment_size=8192, fsync_policy=policy, **kw))[0]


class Follower:
    """Runs a consumer's loop in a thread, collecting what it yields (and any error)."""

    def __init__(self, consumer, commit_every=0):
        self.consumer, self.got, self.error = consumer, [], None
        self.commit_every = commit_every
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for record, position in self.consumer:
                self.got.append((record, position))
                if self.commit_every and len(self.got) % self.commit_every == 0:
                    self.consumer.commit(position)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def wait_for(self, n):
        deadline = time.monotonic() + DEADLINE
        while len(self.got) < n and self.error is None:
            assert time.monotonic() < deadline, f"only {len(self.got)} of {n} records arrived"
            time.sleep(0.005)
        assert self.error is None, self.error
        return self.got[:n]

    def stop(self):
        self.consumer.close()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "close() did not end the iteration"


def test_a_consumer_follows_commits_and_resumes_just_after_its_last_commit(tmp_path):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(batch := recs(40))
        f = Follower(open_consumer(tmp_path, "idx"))
        assert [p for _, p in f.wait_for(40)] == pos and [r for r, _ in f.got] == batch
        later = wal.append(Record.put(b"later", b"v"))  # it follows: waits, then yields the new record
        assert f.wait_for(41)[-1][1] == later
        f.consumer.commit(pos[24])
        f.stop()
        with open_consumer(tmp_path, "idx", start="latest") as again:  # start is ignored: the cursor exists
            assert again.committed == pos[24]
            first = next(iter(again))
            assert first[1] == pos[25]  # just after the commit: at-least-once, nothing before it again


def test_commit_at_the_end_of_a_segment_resumes_in_the_next_one(tmp_path):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(recs(40))
        last_of_0 = max(p for p in pos if p.segment_id == 0)
        with open_consumer(tmp_path, "idx") as c:
            for _, p in c:
                if p == last_of_0:
                    c.commit(p)
                    break
        with open_consumer(tmp_path, "idx") as c:
            assert next(iter(c))[1] == pos[pos.index(last_of_0) + 1]


def test_start_latest_and_start_at_a_position(tmp_path):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(recs(5))
        latest = open_consumer(tmp_path, "tail", start="latest")
        at = open_consumer(tmp_path, "at", start=pos[3])
        new = wal.append(Record.put(b"new", b"v"))
        assert next(iter(latest))[1] == new
        it = iter(at)
        assert [next(it)[1], next(it)[1]] == [pos[3], pos[4]]
        latest.close()
        at.close()


def test_commit_is_checked(tmp_path):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(recs(5))
        with open_consumer(tmp_path, "idx") as c:
            it = iter(c)
            next(it), next(it), next(it)
            with pytest.raises(ValueError, match="not yielded"):
                c.commit(pos[4])
            c.commit(pos[1])  # an earlier one than the last yielded is fine
            c.commit(pos[1])  # again: nothing to do
            with pytest.raises(ValueError, match="forward"):
                c.commit(pos[0])
            c.commit(pos[2])
        with open_consumer(tmp_path, "idx") as c:
            assert c.committed == pos[2] and next(iter(c))[1] == pos[3]


def test_one_process_holds_a_cursor_at_a_time(tmp_path):
    with small_wal(tmp_path):
        c = open_consumer(tmp_path, "idx")
        with pytest.raises(WalLockedError, match="'idx'"):
            open_consumer(tmp_path, "idx")
        code = (
            "import sys\nfrom nori_wal import open_consumer\n"
            "try:\n    open_consumer(sys.argv[1], 'idx')\nexcept Exception as e:\n    print(type(e).__name__)"
        )
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "WalLockedError"
        with pytest.raises(WalLockedError):
            drop_consumer(tmp_path, "idx")
        open_consumer(tmp_path, "other").close()  # other names are free
        c.close()
        open_consumer(tmp_path, "idx").close()  # released by close


def test_close_from_another_thread_ends_a_waiting_consumer_promptly(tmp_path):
    with small_wal(tmp_path) as wal:
        wal.append(Record.put(b"a", b"b"))
        f = Follower(open_consumer(tmp_path, "idx"))
        f.wait_for(1)
        t0 = time.monotonic()
        f.stop()
        assert time.monotonic() - t0 < 5


def test_a_consumer_yields_only_durable_records(tmp_path):
    with small_wal(tmp_path, FsyncPolicy.os()) as wal:
        wal.append_batch(recs(3))
        wal.sync()
        f = Follower(open_consumer(tmp_path, "idx"))
        f.wait_for(3)
        wal.append(Record.put(b"not yet", b"durable"))  # Os: no fsync, so not yet for a consumer
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            assert len(f.got) == 3
            time.sleep(0.01)
        wal.sync()
        assert f.wait_for(4)[-1][0].key == b"not yet"
        f.stop()


def test_works_with_no_writer_running(tmp_path):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(recs(30))
    with open_consumer(tmp_path, "idx") as c:
        got = []
        for _, p in c:
            got.append(p)
            if len(got) == 30:
                c.commit(p)
                break
    assert got == pos
    (info,) = list_consumers(tmp_path)
    assert info.lag_records == 0 and info.committed == pos[-1] and not info.expired


def test_with_a_writer_process_and_a_consumer_in_another_process(tmp_path, spawn_writer):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=16384, fsync_policy=FsyncPolicy.always()))
    code = (
        "import sys\nfrom nori_wal import open_consumer\n"
        "with open_consumer(sys.argv[1], 'proc') as c:\n"
        "    for r, p in c:\n"
        "        print(p, r.key.decode(), flush=True)\n"
        "        c.commit(p)\n"
        "        if r.key == b'stop': break\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, d], stdout=subprocess.PIPE, text=True)
    try:
        with WalClient(w.endpoint, timeout=10) as client:
            pos = [client.append(r) for r in recs(30, size=900)] + [client.append(Record.put(b"stop", b""))]
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert [line.split()[0] for line in out.splitlines()] == [str(p) for p in pos]
    (info,) = list_consumers(d)
    assert info.committed == pos[-1] and info.lag_records == 0 and info.last_commit is not None


def test_gc_waits_for_registered_cursors_and_names_the_one_holding_it_back(tmp_path, caplog):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(recs(60))
        with open_consumer(tmp_path, "slow") as c:
            for _, p in c:
                if p == pos[20]:
                    c.commit(p)
                    break
        caplog.set_level(logging.WARNING)
        deleted = wal.delete_segments_before(wal.current_position())
        assert deleted == pos[21].segment_id  # everything before its next segment, no more
        assert wal.last_gc.held_back and [h.name for h in wal.last_gc.held_by] == ["slow"]
        assert "held back by consumer 'slow'" in caplog.text
        with open_consumer(tmp_path, "slow") as c:  # nothing it had not committed past was deleted
            it = iter(c)
            got = [next(it)[1] for _ in range(60 - 21)]
        assert got == pos[21:]
        drop_consumer(tmp_path, "slow")
        assert wal.delete_segments_before(wal.current_position()) > 0 and not wal.last_gc.held_back


def test_gc_through_a_writer_process_waits_for_cursors_too(tmp_path, spawn_writer):
    d = str(tmp_path / "wal")
    w = spawn_writer(WalConfig(dir=d, max_segment_size=8192, fsync_policy=FsyncPolicy.always()))
    with WalClient(w.endpoint, timeout=10) as client:
        open_consumer(d, "held", start="latest").close()  # registered at the durable end: segment 0
        pos = client.append_batch(recs(40))
        assert client.delete_segments_before(pos[-1]) == 0
        drop_consumer(d, "held")
        assert client.delete_segments_before(pos[-1]) == pos[-1].segment_id


def test_max_retained_bytes_expires_the_lagging_cursor_whose_next_read_says_what_was_lost(tmp_path):
    with small_wal(tmp_path, max_retained_bytes=20_000) as wal:
        first = wal.append(Record.put(b"first", b"v"))
        c = open_consumer(tmp_path, "lagger")
        it = iter(c)
        assert next(it)[1] == first
        c.commit(first)
        keeper = open_consumer(tmp_path, "keeper", start="latest")
        keeper.close()
        wal.append_batch(recs(80))
        deleted = wal.delete_segments_before(wal.current_position())
        assert deleted > 0 and [e.name for e in wal.last_gc.expire] == ["keeper", "lagger"]
        with pytest.raises(ConsumerExpiredError, match=r"'lagger'.*records from 0:\d+ up to \d+:32"):
            for _ in it:
                pass
        info = {i.name: i for i in list_consumers(tmp_path)}
        assert info["lagger"].expired and info["lagger"].lost[0] == c.resume_position
        c.close()
        with pytest.raises(ConsumerExpiredError):
            open_consumer(tmp_path, "lagger")
        assert drop_consumer(tmp_path, "lagger")
        with open_consumer(tmp_path, "lagger") as fresh:  # dropped and opened again: from what is left
            assert next(iter(fresh))[1].segment_id == wal.last_gc.expire[0].resumes_at.segment_id


@pytest.mark.parametrize("on_gap", ["raise", "skip"])
def test_a_consumer_overtaken_by_gc_raises_records_deleted_unless_it_skips(tmp_path, on_gap):
    with small_wal(tmp_path) as wal:
        pos = wal.append_batch(recs(60))
        last = pos[-1].segment_id
        with open_consumer(tmp_path, "c", on_gap=on_gap) as c:
            it = iter(c)
            next(it)  # holds segment 0 open
            os.unlink(tmp_path / "consumers" / "c.cursor")  # unregistered behind its back: GC ignores it
            wal.delete_segments_before(Position(last, 0))
            if on_gap == "raise":
                with pytest.raises(RecordsDeletedError, match=f"up to {last}:32") as err:
                    for _ in it:
                        pass
                assert err.value.gap_end == Position(last, 32)
            else:
                kept = [p for p in pos if p.segment_id in (0, last)]
                assert [next(it)[1] for _ in range(len(kept) - 1)] == kept[1:]


def test_a_damaged_cursor_file_is_never_trusted(tmp_path, caplog):
    with small_wal(tmp_path) as wal:
        wal.append_batch(recs(40))
        open_consumer(tmp_path, "idx").close()
        path = tmp_path / "consumers" / "idx.cursor"
        data = bytearray(path.read_bytes())
        data[20] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptionError, match="idx.cursor is damaged"):
            open_consumer(tmp_path, "idx")
        (info,) = list_consumers(tmp_path)
        assert info.damage and info.next is None
        assert wal.delete_segments_before(wal.current_position()) == 0  # unknown position: holds everything
        assert drop_consumer(tmp_path, "idx")


@pytest.mark.parametrize("bad", ["../escape", "a/b", "", ".x"])
def test_bad_names_are_refused_before_touching_the_disk(tmp_path, bad):
    with pytest.raises(ValueError):
        open_consumer(tmp_path, bad)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "consumers").exists()
