"""Crash states through keyed appends: the dedupe index survives crashes as the records do.

A workload of keyed appends (single, batches that repeat a key, retries of
acknowledged keys, unkeyed records between, a clean reopen, segment rolls that
write key files) runs on FaultFS; the disk is snapshotted after every
mutating syscall and every acknowledgement, and each snapshot is crashed the
ways ``crashsim.crash_variants`` knows (power loss, torn and zero-filled
writes, lost directory entries, SIGKILL). For every state, after recovery:
every acknowledged key is in the log exactly once, at the position its
append returned; no key is in the log twice; a retry of any key in the log
returns its position and writes nothing; and after a clean close and reopen
(key files) the same holds.
"""

from __future__ import annotations

import random

import pytest

from nori_wal import Position, Record, Wal
from nori_wal import protocol as P
from nori_wal.client.session import append_results, positions_of
from nori_wal.codec import encode_record
from nori_wal.segment_log import SegmentLog
from nori_wal.testing import FaultFS
from nori_wal.testing.crashsim import POLICIES, Acks, InvariantViolation, crash_variants, workload_config
from nori_wal.writer_proc.dedupe_stage import open_keys, write_keyed_group
from nori_wal.writer_proc.group import GroupBuilder, acks_keyed


def keyed(i: int) -> Record:
    return Record.put(b"r%d" % i, bytes([i % 251]) * (90 + i % 7 * 40)).with_idempotency_key(b"key-%d" % i)


class WriterPath:
    """The writer process's keyed path without its sockets: ``GroupBuilder`` and ``dedupe_stage`` over a
    SegmentLog (unit-by-unit writes across rolls, the writer's index and seal hook), fsync per request."""

    def __init__(self, config, layer):
        self.log, _ = SegmentLog.open(config, layer)
        self.keys = open_keys(self.log)
        self.rid = 0

    def append_ex(self, record):
        return self.append_batch_ex([record])[0]

    def append_batch_ex(self, records):
        frames = [encode_record(r) for r in records]
        self.rid += 1
        group = GroupBuilder(self.log.max_frame, self.keys)
        assert group.add(b"producer", P.encode_append(self.rid, len(frames)) + b"".join(frames), None) is None
        assert group.keys is not None  # (every request of the workload holds a keyed record)
        firsts = write_keyed_group(self.log, group.units, group.counts, group.keys)
        (ticket,) = acks_keyed(group, firsts, 0.0)
        self.log.sync()  # Always: the ack waits for this fsync
        reply = P.decode_reply(ticket.reply)
        return append_results(positions_of(reply.result, [len(f) for f in frames]))

    def close(self):
        self.log.close()


def open_embedded(config, fs):
    return Wal.open(config, layer=fs)[0]


def run_keyed_workload(config, seed: int, opener=open_embedded):
    """Run the workload (through ``opener(config, fs)``: a Wal or a WriterPath); (moments, positions by key)."""
    rng = random.Random(seed)
    fs = FaultFS()
    moments: list = []
    acks = Acks(config.fsync_policy.kind != "os", fs, moments)
    fs.observe(acks.observe)
    positions: dict[int, Position] = {}

    def ack(i: int, pos: Position) -> None:
        assert positions.setdefault(i, pos) == pos, f"key {i} answered at {pos}, first at {positions[i]}"
        acks.ack((i,))

    wal = opener(config, fs)
    try:
        nxt = 0
        for step in range(46):
            if step == 30:  # a clean reopen: the rebuild from key files, then more appends and retries
                wal.close()
                acks.all_durable()
                wal = opener(config, fs)
            if step % 4 == 3:  # a batch repeating a key, with an unkeyed record and a retry of an acked key
                old = rng.choice(sorted(positions)) if positions else nxt
                batch = [nxt, nxt + 1, nxt, old]
                recs = [keyed(i) for i in batch] + [Record.put(b"plain", b"p" * 50)]
                results = wal.append_batch_ex(recs)
                assert [r.duplicate for r in results[:3]] == [False, False, True]
                for i, res in zip(batch, results):
                    ack(i, res.position)
                nxt += 2
            elif step % 5 == 4 and positions:  # a retry of an acknowledged key
                i = rng.choice(sorted(positions))
                res = wal.append_ex(keyed(i))
                assert res.duplicate
                ack(i, res.position)
            else:
                res = wal.append_ex(keyed(nxt))
                assert not res.duplicate
                ack(nxt, res.position)
                nxt += 1
        wal.close()
        acks.all_durable()
    finally:
        wal.close()
    return moments, positions


def keys_in_log(wal: Wal) -> dict[bytes, list[Position]]:
    found: dict[bytes, list[Position]] = {}
    for rec, pos in wal.read_from(Position(0, 0)):
        if rec.idempotency_key is not None:
            found.setdefault(rec.idempotency_key, []).append(pos)
    return found


def check_recovered(config, post: FaultFS) -> dict[int, Position]:
    """Recover ``post``; check exactly-once and retries (twice: after recovery, after a clean reopen)."""
    first: dict[int, Position] = {}
    for round_ in range(2):
        wal, _ = Wal.open(config, layer=post)
        try:
            found = keys_in_log(wal)
            twice = {k: p for k, p in found.items() if len(p) > 1}
            if twice:
                raise InvariantViolation(f"keys in the log more than once: {twice}")
            now = {int(k[4:]): p[0] for k, p in found.items()}
            if round_ and now != first:
                raise InvariantViolation(f"a clean reopen changed the keys: {first} -> {now}")
            first = now
            for i, pos in sorted(now.items()):
                res = wal.append_ex(keyed(i))
                if res != (pos, True):
                    raise InvariantViolation(f"retry of key {i} gave {res}, the log holds it at {pos}")
            if keys_in_log(wal) != found:
                raise InvariantViolation("retries wrote records")
        finally:
            wal.close()
    return first


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "policy,path", [(p, "embedded") for p in POLICIES] + [("always", "writer")], ids=lambda x: str(x)
)
def test_every_crash_state_of_keyed_appends(tmp_path, policy, path, crash_counts):
    config = workload_config(str(tmp_path), policy)
    moments, positions = run_keyed_workload(config, seed=3, opener=WriterPath if path == "writer" else open_embedded)
    assert sum(1 for m in moments if m.call.op == "rename" and ".keys" in m.call.path) >= 3  # key files
    cache: dict[object, dict[int, Position]] = {}
    states = 0
    for k, m in enumerate(moments):
        later = moments[k + 1] if k + 1 < len(moments) else None
        covered = later is not None and later.fs is m.fs
        for state in crash_variants(m):
            if covered and not state.during_call:
                continue
            states += 1
            post = m.fs.crash(state.spec)
            image = post.image()
            try:
                got = cache.get(image)
                if got is None:
                    got = cache[image] = check_recovered(config, post)
                lost = {i for i in state.required if got.get(i) != positions[i]}
                if lost:
                    raise InvariantViolation(f"acknowledged keys lost or moved: {sorted(lost)}")
            except InvariantViolation as exc:
                raise InvariantViolation(f"{state.describe()}: {exc}") from None
    crash_counts["crash_states"] += states
    crash_counts["crash_images"] += len(cache)
    assert states >= 300


def test_a_crash_between_the_key_file_and_the_seal_scans_the_segment(tmp_path):
    """The key file is durable, the seal is not: the segment is unsealed, scanned, and its keys kept."""
    config = workload_config(str(tmp_path), "always")
    fs = FaultFS()
    wal, _ = Wal.open(config, layer=fs)
    pos = [wal.append(keyed(i)) for i in range(5)]
    crashed = None

    def watch(layer, call):
        nonlocal crashed
        if crashed is None and call.op == "sync_dir" and any(n.endswith(".keys") for n in layer.listdir(config.dir)):
            crashed = layer.snapshot()

    fs.observe(watch)
    wal.close()
    assert crashed is not None
    post = crashed.crash()
    wal, _ = Wal.open(config, layer=post)
    try:
        assert wal.dedupe_rebuild.segments_scanned == 1
        assert [wal.append_ex(keyed(i)) for i in range(5)] == [(p, True) for p in pos]
    finally:
        wal.close()
