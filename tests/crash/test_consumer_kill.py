"""SIGKILL a consumer process at random points under load, restart it, and check what it was given.

A real writer process, a producer appending through ZeroMQ, and a consumer
process that logs each record before it commits and each commit after it
returns (O_APPEND writes: they survive a SIGKILL). Invariants across every
restart: nothing at or before the last commit is delivered again, nothing
after it is skipped, and every run yields the log's records in log order.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from nori_wal import FsyncPolicy, Record, WalConfig, open_reader
from nori_wal.client import WalClient
from nori_wal.position import Position
from nori_wal.writer_proc import WriterProcess

CONSUMER = r"""
import os, random, sys
from nori_wal import open_consumer
d, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, b"S\n")
with open_consumer(d, "killed") as c:
    for record, p in c:
        os.write(fd, b"P %d:%d\n" % p)
        if rng.random() < 0.3:
            c.commit(p)
            os.write(fd, b"C %d:%d\n" % p)
"""


def parse(log: str) -> list[tuple[list[Position], list[Position]]]:
    runs: list[tuple[list[Position], list[Position]]] = []
    with open(log) as f:
        for line in f:
            if line == "S\n":
                runs.append(([], []))
            elif line.endswith("\n"):  # a torn last line (killed mid-write) is dropped
                kind, text = line.split()
                runs[-1][0 if kind == "P" else 1].append(Position.parse(text))
    return runs


def count_lines(log: str) -> int:
    try:
        with open(log, "rb") as f:
            return f.read().count(b"\nP ")
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(240)
def test_a_consumer_killed_at_random_points_resumes_after_its_last_commit(tmp_path):
    d, log = str(tmp_path / "wal"), str(tmp_path / "consumed.log")
    rng = random.Random(1234)
    writer = WriterProcess.spawn(
        WalConfig(dir=d, max_segment_size=32768, fsync_policy=FsyncPolicy.always()), timeout=30.0
    )
    stop = threading.Event()
    appended: list[Position] = []

    failed: list[BaseException] = []

    def produce() -> None:
        try:
            with WalClient(writer.endpoint, timeout=10) as client:
                i = 0
                while not stop.is_set() and i < 3000:
                    batch = [Record.put(b"r%06d" % (i + j), b"x" * 200) for j in range(5)]
                    appended.extend(client.append_batch(batch))
                    i += 5
        except BaseException as exc:  # handed to the test
            failed.append(exc)

    def finished() -> bool:
        runs = parse(log)
        return bool(runs and runs[-1][0] and runs[-1][0][-1] == appended[-1])

    producer = threading.Thread(target=produce, daemon=True)
    child: subprocess.Popen[bytes] | None = None
    try:
        producer.start()
        for run in range(8):
            before = count_lines(log)
            child = subprocess.Popen([sys.executable, "-c", CONSUMER, d, log, str(run)])
            want = before + rng.randint(1, 300)
            deadline = time.monotonic() + 60
            while count_lines(log) < want and time.monotonic() < deadline and child.poll() is None:
                time.sleep(0.002)
            assert child.poll() is None, "the consumer died by itself"
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        stop.set()
        producer.join(60)
        assert not failed and appended, failed
        # A last run to the end of what was appended.
        child = subprocess.Popen([sys.executable, "-c", CONSUMER, d, log, "99"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not finished():
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        stop.set()
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        writer.stop(timeout=15)
    in_log = [p for _, p in open_reader(d)]
    assert in_log == appended
    successor = {p: in_log[i + 1] for i, p in enumerate(in_log[:-1])}
    runs = parse(log)
    assert len(runs) == 9 and runs[-1][0][-1] == appended[-1]
    covered: set[Position] = set()
    for i, (seen, commits) in enumerate(runs):
        start = in_log.index(seen[0]) if seen else None
        assert seen == in_log[start : start + len(seen)], f"run {i} is not the log's records in order"
        covered.update(seen)
        if i + 1 < len(runs) and runs[i + 1][0]:
            first_next = runs[i + 1][0][0]
            last_commit = commits[-1] if commits else None
            # The commit in flight at the kill may have landed: the next run starts after the last logged
            # commit or after a later record this run yielded -- never at or before the last commit, never
            # past what it was given.
            if last_commit is not None:
                assert first_next > last_commit, f"run {i + 1} re-delivered the committed {first_next}"
            assert first_next <= successor.get(seen[-1], first_next) if seen else True, f"run {i + 1} skipped"
            allowed = {successor[p] for p in seen if p in successor and (last_commit is None or p >= last_commit)}
            if last_commit is None and i == 0:
                allowed.add(in_log[0])
            if last_commit is None and i > 0:
                allowed.add(runs[i][0][0])
            assert first_next in allowed, f"run {i + 1} started at {first_next}"
    assert covered == set(in_log)
