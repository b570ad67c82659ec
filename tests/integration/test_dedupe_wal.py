"""Exactly-once appends on the embedded Wal, on real files: keys, batches, reopen, crash, GC, capacity."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import timedelta

import pytest

from nori_wal import AppendResult, DedupeCapacityError, FsyncPolicy, Position, Record, Wal, WalConfig


def cfg(path, **kw) -> WalConfig:
    kw.setdefault("max_segment_size", 64 * 1024)
    return WalConfig(str(path), fsync_policy=FsyncPolicy.always(), **kw)


def rec(i: int, size: int = 100) -> Record:
    return Record.put(b"r%d" % i, b"v" * size).with_idempotency_key(b"task-%d" % i)


def all_records(wal: Wal) -> list[tuple[Record, Position]]:
    return list(wal.read_from(Position(0, 0)))


def test_a_repeated_key_returns_the_original_position_and_writes_nothing(tmp_path):
    with Wal.open(cfg(tmp_path))[0] as wal:
        first = wal.append(rec(1))
        end = wal.current_position()
        assert wal.append(rec(1)) == first
        assert wal.append_ex(rec(1)) == AppendResult(first, True)
        # Another record under the same key is still the same append (the key is the identity).
        assert wal.append_ex(Record.put(b"other", b"x").with_idempotency_key(b"task-1")) == (first, True)
        assert wal.current_position() == end
        assert wal.append_ex(Record.put(b"plain", b"x")).duplicate is False
        assert [r for r, _ in all_records(wal)] == [rec(1), Record.put(b"plain", b"x")]


def test_a_batch_judges_each_keyed_record_and_writes_a_repeated_key_once(tmp_path):
    with Wal.open(cfg(tmp_path))[0] as wal:
        p0 = wal.append(rec(0))
        batch = [rec(1), rec(0), Record.put(b"plain", b""), rec(2), rec(1)]
        res = wal.append_batch_ex(batch)
        assert [r.duplicate for r in res] == [False, True, False, False, True]
        assert res[1].position == p0 and res[4].position == res[0].position
        again = wal.append_batch_ex(batch)  # the unkeyed record is written again, as always
        assert [r.duplicate for r in again] == [True, True, False, True, True]
        assert [r.position for i, r in enumerate(again) if i != 2] == [r.position for i, r in enumerate(res) if i != 2]
        keys = [r.idempotency_key for r, _ in all_records(wal) if r.idempotency_key]
        assert sorted(keys) == [b"task-0", b"task-1", b"task-2"]


def test_a_keyed_batch_larger_than_a_segment_is_remembered_across_its_rolls(tmp_path):
    config = cfg(tmp_path)
    with Wal.open(config)[0] as wal:
        res = wal.append_batch_ex([rec(i, 1000) for i in range(200)])  # ~200 KB over 64 KiB segments
        assert len({r.position.segment_id for r in res}) >= 3
    wal, _ = Wal.open(config)
    with wal:
        assert wal.dedupe_rebuild.segments_scanned == 0 and wal.dedupe_rebuild.keys == 200
        assert [wal.append_ex(rec(i, 1000)) for i in range(200)] == [(r.position, True) for r in res]


def test_a_clean_reopen_reads_key_files_not_segments(tmp_path):
    config = cfg(tmp_path)
    with Wal.open(config)[0] as wal:
        positions = [wal.append(rec(i, 2000)) for i in range(100)]
    assert any(n.endswith(".keys") for n in os.listdir(tmp_path))
    with Wal.open(config)[0] as wal:
        assert wal.dedupe_rebuild.segments_scanned == 0
        assert [wal.append(rec(i, 2000)) for i in range(100)] == positions


def test_a_key_file_that_does_not_match_its_segment_is_ignored_and_the_segment_scanned(tmp_path):
    config = cfg(tmp_path)
    with Wal.open(config)[0] as wal:
        positions = [wal.append(rec(i, 2000)) for i in range(60)]
    victim = sorted(n for n in os.listdir(tmp_path) if n.endswith(".keys"))[0]
    with open(tmp_path / victim, "r+b") as f:
        f.seek(60)
        f.write(b"\xff")
    with Wal.open(config)[0] as wal:
        assert wal.dedupe_rebuild.key_files_ignored == 1 and wal.dedupe_rebuild.segments_scanned == 1
        assert [wal.append(rec(i, 2000)) for i in range(60)] == positions


CHILD = textwrap.dedent(
    """
    import os, sys
    from nori_wal import FsyncPolicy, Record, Wal, WalConfig
    wal, _ = Wal.open(WalConfig(sys.argv[1], max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always()))
    for i in range(int(sys.argv[2])):
        pos = wal.append(Record.put(b"r%d" % i, b"v" * 2000).with_idempotency_key(b"task-%d" % i))
        print(i, pos.segment_id, pos.offset, flush=True)
    os._exit(0)  # no close: no seal, no key file for the last segment
    """
)


def test_after_a_crash_every_acknowledged_key_is_remembered_once(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), "70"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    acked = {int(a): Position(int(b), int(c)) for a, b, c in (line.split() for line in out if line)}
    config = cfg(tmp_path)
    with Wal.open(config)[0] as wal:
        assert wal.dedupe_rebuild.segments_scanned == 1  # only the unsealed last one
        assert {i: wal.append_ex(rec(i, 2000)) for i in acked} == {i: (p, True) for i, p in acked.items()}
        keys = [r.idempotency_key for r, _ in all_records(wal)]
        assert len(keys) == len(set(keys)) == 70


def test_past_the_cap_a_new_key_is_refused_and_nothing_written_but_duplicates_answer(tmp_path):
    with Wal.open(cfg(tmp_path, dedupe_max_keys=3))[0] as wal:
        positions = [wal.append(rec(i)) for i in range(3)]
        end = wal.current_position()
        with pytest.raises(DedupeCapacityError, match="dedupe_max_keys"):
            wal.append(rec(3))
        with pytest.raises(DedupeCapacityError):
            wal.append_batch([Record.put(b"plain", b""), rec(4)])
        assert wal.current_position() == end
        assert wal.append_batch([rec(2), rec(0)]) == [positions[2], positions[0]]
        wal.append(Record.put(b"unkeyed", b"still fine"))


def test_automatic_keys_one_at_a_time_count_against_their_own_cap(tmp_path):
    """A retrying client's keys (16 bytes, 0x00 first) past dedupe_max_keys are taken, to dedupe_max_auto_keys."""
    auto = [b"\x00" + b"%015d" % i for i in range(6)]
    with Wal.open(cfg(tmp_path, dedupe_max_keys=2, dedupe_max_auto_keys=5))[0] as wal:
        positions = [wal.append(Record.put(b"a", b"v").with_idempotency_key(k)) for k in auto[:5]]
        with pytest.raises(DedupeCapacityError, match="dedupe_max_auto_keys"):
            wal.append(Record.put(b"a", b"v").with_idempotency_key(auto[5]))
        assert wal.append(Record.put(b"a", b"v").with_idempotency_key(auto[1])) == positions[1]
        wal.append(rec(0))  # a caller's key: its own cap, untouched by the automatic ones
        wal.append(rec(1))


def test_a_key_past_the_window_is_appended_again(tmp_path, monkeypatch):
    import nori_wal.wal as wal_mod

    now = [1_000_000]
    monkeypatch.setattr(wal_mod, "_now_ms", lambda: now[0])
    with Wal.open(cfg(tmp_path, dedupe_window=timedelta(seconds=1)))[0] as wal:
        first = wal.append(rec(1))
        now[0] += 1000
        assert wal.append(rec(1)) == first  # at the edge: still remembered
        now[0] += 1
        again = wal.append_ex(rec(1))
        assert not again.duplicate and again.position > first
        assert wal.append_ex(rec(1)) == (again.position, True)
        assert sum(1 for r, _ in all_records(wal) if r.idempotency_key) == 2


def test_gc_removes_the_key_files_of_deleted_segments(tmp_path):
    with Wal.open(cfg(tmp_path))[0] as wal:
        for i in range(100):
            wal.append(rec(i, 2000))
        wal.delete_segments_before(wal.current_position())
        names = os.listdir(tmp_path)
        segs = {n[:6] for n in names if n.endswith(".wal")}
        assert {n[:6] for n in names if n.endswith(".keys")} <= segs
