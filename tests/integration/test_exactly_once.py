"""Exactly-once appends through a writer process: keys judged by the writer, transparent client retries.

Real writer processes and producers; writers are SIGKILLed and restarted
while producers append; the log must hold every call's record exactly once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from nori_wal import (
    AsyncWalClient,
    FsyncPolicy,
    Position,
    Record,
    WalClient,
    WalConfig,
    WriterUnavailableError,
    open_reader,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from exactly_support import GatedSyncLayer  # noqa: E402


def _values(directory: str) -> Counter[bytes]:
    with open_reader(directory) as r:
        return Counter(bytes(rec.value) for rec, _ in r)


def _keyed(n: int, key: bytes) -> Record:
    return Record.put(b"k", b"value %d" % n).with_idempotency_key(key)


@pytest.mark.timeout(60)
def test_the_writer_answers_a_known_key_with_the_original_position(wal_dir, spawn_writer):
    spawn_writer(WalConfig(wal_dir, max_segment_size=64 * 1024))
    with WalClient.for_dir(wal_dir) as client:
        first = client.append_ex(_keyed(1, b"order-1"))
        again = client.append_ex(_keyed(2, b"order-1"))  # same key, another value: the first stays
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.position == first.position == client.append(_keyed(3, b"order-1"))
        batch = [_keyed(i, b"b%d" % (i % 7)) for i in range(40)] + [Record.put(b"plain", b"p")]
        res = client.append_batch_ex(batch)
        assert [r.duplicate for r in res[:7]] == [False] * 7 and all(r.duplicate for r in res[7:40])
        assert all(res[i].position == res[i % 7].position for i in range(40))
        assert not res[40].duplicate
        pend = [client.submit(_keyed(9, b"order-1")), client.submit(Record.put(b"s", b"s"))]
        got = [p.result_ex() for p in pend]
        assert got[0] == (first.position, True) and not got[1].duplicate
        rolled = [client.append(_keyed(i, b"r%d" % i)) for i in range(600)]  # keys across many rolls
        assert [r.position for r in client.append_batch_ex([_keyed(0, b"r%d" % i) for i in range(600)])] == rolled
    with open_reader(wal_dir) as r:
        keys = Counter(rec.idempotency_key for rec, _ in r)
    assert keys[b"order-1"] == 1 and keys[None] == 2 and len(keys) == 1 + 7 + 600 + 1


@pytest.mark.timeout(60)
def test_keys_survive_a_sigkill_of_the_writer(wal_dir, spawn_writer):
    config = WalConfig(wal_dir, max_segment_size=64 * 1024)
    w = spawn_writer(config)
    with WalClient.for_dir(wal_dir) as client:
        positions = [client.append(Record.put(b"k", b"x" * 300).with_idempotency_key(b"r%d" % i)) for i in range(500)]
    w.kill()
    spawn_writer(config)
    with WalClient.for_dir(wal_dir) as client:
        assert client.info()["dedupe_keys"] == 500
        res = client.append_batch_ex([Record.put(b"k", b"y").with_idempotency_key(b"r%d" % i) for i in range(500)])
    assert [r.position for r in res] == positions and all(r.duplicate for r in res)


@pytest.mark.timeout(120)
def test_keys_work_through_a_batch_split_at_16_mib(wal_dir, spawn_writer):
    spawn_writer(WalConfig(wal_dir, max_segment_size=32 * 1024 * 1024))
    big = [Record.put(b"k", os.urandom(200_000)).with_idempotency_key(b"big%d" % i) for i in range(90)]  # 18 MB
    with WalClient.for_dir(wal_dir, timeout=30.0) as client:
        first = client.append_batch_ex(big)
        again = client.append_batch_ex(big)
    assert not any(r.duplicate for r in first) and all(r.duplicate for r in again)
    assert [r.position for r in again] == [r.position for r in first]
    with open_reader(wal_dir) as r:
        assert sum(1 for _ in r) == 90


@pytest.mark.timeout(60)
def test_async_client_keys_in_coalesced_requests(wal_dir, spawn_writer):
    spawn_writer(wal_dir)

    async def main() -> None:
        async with AsyncWalClient.for_dir(wal_dir) as client:
            res = await asyncio.gather(*(client.append_ex(_keyed(i, b"a%d" % (i % 5))) for i in range(30)))
            firsts = {r.position for r in res if not r.duplicate}
            assert len(firsts) == 5 and sum(r.duplicate for r in res) == 25
            batch = await client.append_batch_ex([_keyed(i, b"a%d" % i) for i in range(7)])
            assert [r.duplicate for r in batch] == [True] * 5 + [False] * 2

    asyncio.run(main())
    assert sum(_values(wal_dir).values()) == 7


def _kill_and_restart(spawn, config: WalConfig, writer, rounds: int, stop: threading.Event, errors: list) -> None:
    try:
        for _ in range(rounds):
            if stop.wait(0.4):
                return
            writer.kill()
            time.sleep(0.2)  # the writer stays down a while: producers back off and retry meanwhile
            writer = spawn(config)
    except BaseException as exc:  # noqa: BLE001  (reported by the test)
        errors.append(exc)


@pytest.mark.timeout(240)
def test_retrying_producers_never_fail_and_never_duplicate_across_writer_sigkills(tmp_path, wal_dir, spawn_writer):
    config = WalConfig(wal_dir, fsync_policy=FsyncPolicy.parse("always"), max_segment_size=256 * 1024)
    writer = spawn_writer(config)
    n, tags = 150, ["p0", "p1", "p2"]
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "exactly_support.py"), "produce", wal_dir, tag, str(n), str(tmp_path / tag)]
        )
        for tag in tags
    ]
    stop, errors = threading.Event(), []
    killer = threading.Thread(target=_kill_and_restart, args=(spawn_writer, config, writer, 5, stop, errors))
    killer.start()
    try:
        codes = [p.wait(200) for p in procs]
    finally:
        stop.set()
        killer.join(60)
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert not errors and codes == [0, 0, 0]
    # (the killer's last writer still serves: the readers below read the log beside it)
    counts = _values(wal_dir)
    expected = Counter()
    for tag in tags:
        for i in range(n):
            if i % 5 == 4:
                expected.update(b"%s:%d:%d" % (tag.encode(), i, j) for j in range(3))
            else:
                expected[b"%s:%d" % (tag.encode(), i)] += 1
        acked = (tmp_path / tag).read_text().splitlines()
        assert len(acked) == n  # every call returned
    assert counts == expected  # each call's record exactly once: none lost, none duplicated


@pytest.mark.timeout(120)
def test_a_caller_retry_from_another_process_returns_the_original_position(tmp_path, wal_dir, spawn_writer):
    gate = str(tmp_path / "gate")
    config = WalConfig(wal_dir)
    with open(gate, "w"):
        pass  # the writer's start-up fsyncs pass ...
    w = spawn_writer(config, layer=GatedSyncLayer(gate))
    with WalClient.for_dir(wal_dir, timeout=1.0) as client:
        client.append(Record.put(b"warm", b"up"))
        os.unlink(gate)  # ... the next one waits: the append is written, its ack never comes
        with pytest.raises(WriterUnavailableError):
            client.append(Record.put(b"k", b"the record").with_idempotency_key(b"celery-task-7f3a"))
    w.kill()  # the outcome was unknown to the caller; the bytes are in the file
    spawn_writer(config)
    out = subprocess.run(
        [sys.executable, str(HERE / "exactly_support.py"), "retry", wal_dir, "celery-task-7f3a"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    duplicate, position = out.stdout.split()
    with open_reader(wal_dir) as r:
        keyed = [p for rec, p in r if rec.idempotency_key == b"celery-task-7f3a"]
    assert duplicate == "True" and keyed == [Position.parse(position)]


@pytest.mark.timeout(60)
def test_delivery_timeout_bounds_the_retries(wal_dir):
    os.makedirs(wal_dir)
    with WalClient.for_dir(wal_dir, timeout=0.5, delivery_timeout=0.6) as client:
        t0 = time.monotonic()
        with pytest.raises(WriterUnavailableError, match="delivery_timeout"):
            client.append(Record.put(b"k", b"v"))
        assert time.monotonic() - t0 < 10
    with pytest.raises(ValueError):
        WalClient.for_dir(wal_dir, delivery_timeout=0)
