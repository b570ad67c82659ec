"""WalHandler: logging from many processes into one log through a real writer process.

Proves: every message of 4 spawned processes is in the log, in each process's
order; a forked child never sends its parent's queued records; with the writer
down the application never waits (records are dropped and counted, close is
bounded) and sending resumes once a writer serves the directory.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections import defaultdict

import pytest

from nori_wal import Record, open_reader
from nori_wal.log_handler import WalHandler, decode_log_record, encode_log_record, format_log_record

PER_PROCESS = 150


def _records(wal_dir: str) -> list[tuple[bytes, dict]]:
    with open_reader(wal_dir) as reader:
        return [(bytes(r.key), decode_log_record(r.value)) for r, _ in reader]


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _log_from_child(wal_dir: str, worker: int) -> None:
    """A spawned process: a fresh interpreter that adds the handler, logs, and returns (no explicit flush)."""
    log = logging.getLogger(f"app.worker{worker}")
    log.setLevel(logging.INFO)
    log.addHandler(WalHandler(wal_dir, queue_size=PER_PROCESS * 2))
    for seq in range(PER_PROCESS):
        log.info("step %d of worker %d", seq, worker, extra={"seq": seq, "worker": worker})


@pytest.mark.timeout(180)
def test_four_spawned_processes_log_every_message_in_per_process_order(spawn_writer, wal_dir):
    spawn_writer(wal_dir)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_log_from_child, args=(wal_dir, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0, p.exitcode
    by_worker: dict[int, list[int]] = defaultdict(list)
    pids: dict[int, set[int]] = defaultdict(set)
    for key, doc in _records(wal_dir):
        worker = doc["extra"]["worker"]
        assert key == f"app.worker{worker}".encode()  # the logger name is the key
        assert doc["message"] == f"step {doc['extra']['seq']} of worker {worker}"
        assert (doc["level"], doc["levelno"], doc["logger"]) == ("INFO", 20, f"app.worker{worker}")
        by_worker[worker].append(doc["extra"]["seq"])
        pids[worker].add(doc["process"])
    assert {w: seqs for w, seqs in by_worker.items()} == {w: list(range(PER_PROCESS)) for w in range(4)}
    assert all(len(p) == 1 for p in pids.values()) and len(set().union(*pids.values())) == 4


def _child_after_fork(log: logging.Logger, handler: WalHandler) -> None:
    log.warning("from the child")
    handler.close()
    os._exit(0 if handler.sent == 1 else 1)


@pytest.mark.timeout(120)
def test_a_forked_child_sends_only_its_own_records(spawn_writer, wal_dir):
    spawn_writer(wal_dir)
    handler = WalHandler(wal_dir)
    log = logging.getLogger("forked")
    log.propagate = False
    log.addHandler(handler)
    try:
        for i in range(50):
            log.warning("parent %d", i)
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_child_after_fork, args=(log, handler))
        child.start()  # the parent's queue may still hold records: the child must not send them
        child.join(60)
        assert child.exitcode == 0
        log.warning("parent after")
        handler.flush()
        assert (handler.sent, handler.dropped) == (51, 0)
    finally:
        log.removeHandler(handler)
        handler.close()
    messages = [doc["message"] for _, doc in _records(wal_dir)]
    assert sorted(messages) == sorted([f"parent {i}" for i in range(50)] + ["from the child", "parent after"])
    parent = [m for m in messages if m.startswith("parent")]
    assert parent == [f"parent {i}" for i in range(50)] + ["parent after"]


@pytest.mark.timeout(120)
def test_with_the_writer_down_logging_never_waits_and_resumes_when_a_writer_serves(spawn_writer, tmp_path):
    wal_dir = str(tmp_path / "wal")
    handler = WalHandler(wal_dir, queue_size=100, batch_size=10, timeout=0.5, flush_timeout=1.0)
    log = logging.getLogger("down")
    log.propagate = False
    log.addHandler(handler)
    try:
        for i in range(5000):
            log.error("while down %d", i)
        # emit never waited for the sender (stuck on the absent writer): all but a queue's worth dropped
        assert handler.dropped >= 5000 - 100 - 10
        assert handler.sent == 0
        handler.flush()  # bounded by flush_timeout, though nothing can be sent
        spawn_writer(wal_dir)
        log.error("after the writer started")
        _wait_for(lambda: handler.sent >= 1, what="a record sent once the writer serves")
    finally:
        log.removeHandler(handler)
        handler.close()
    assert handler.sent + handler.dropped == 5001
    got = [doc["message"] for _, doc in _records(wal_dir)]
    assert got[-1] == "after the writer started"
    assert len(got) == handler.sent  # nothing written twice


@pytest.mark.timeout(60)
def test_close_is_bounded_when_the_writer_never_answers(tmp_path):
    handler = WalHandler(f"ipc://{tmp_path}/nobody.sock", queue_size=50, timeout=30.0, flush_timeout=0.5)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    for _ in range(20):
        handler.handle(record)
    handler.close()  # a send waiting up to 30 s is cut short: close waits flush_timeout and a receive slice
    assert (handler.sent, handler.dropped) == (0, 20)
    handler.handle(record)  # after close: ignored, never raises
    assert handler.dropped == 20


def test_records_are_json_with_the_fields_and_print_as_one_line():
    log = logging.getLogger("fmt.test")
    try:
        raise KeyError("missing")
    except KeyError:
        import sys

        rec = log.makeRecord(
            "fmt.test", logging.ERROR, "/srv/app.py", 42, "user %s failed", ("bob",), sys.exc_info(), "handle"
        )
    rec.__dict__.update({"order": 7, "tags": ["a"], "obj": object()})
    value = encode_log_record(rec)
    doc = json.loads(value)
    assert doc["message"] == "user bob failed" and doc["level"] == "ERROR" and doc["logger"] == "fmt.test"
    assert (doc["file"], doc["line"], doc["function"], doc["process"]) == ("/srv/app.py", 42, "handle", os.getpid())
    assert doc["extra"]["order"] == 7 and doc["extra"]["tags"] == ["a"] and doc["extra"]["obj"].startswith("<object")
    assert "KeyError: 'missing'" in doc["exception"]
    line = format_log_record(value)
    first = line.splitlines()[0]
    assert first.endswith(
        ' ERROR    fmt.test [pid %d MainProcess] user bob failed  order=7 tags=["a"] obj=%s'
        % (os.getpid(), json.dumps(doc["extra"]["obj"]))
    )
    assert "KeyError: 'missing'" in line
    for not_a_log in (b"", b"plain bytes", b'{"a": 1}', b"\xff"):
        with pytest.raises(ValueError, match="not a WalHandler log record"):
            format_log_record(not_a_log)


def test_the_handler_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match="WalHandler target must be a log directory, a writer endpoint or a WalClient"):
        WalHandler(5)
    with pytest.raises(ValueError, match="WalHandler queue_size"):
        WalHandler(str(tmp_path), queue_size=0)
    Record.put(b"k", b"v")  # (the module imports cleanly beside the core)


def test_the_handler_pickles_as_its_settings(tmp_path):
    import pickle

    handler = WalHandler(str(tmp_path / "wal"), logging.WARNING, queue_size=7, batch_size=3, timeout=2.0)
    try:
        copy = pickle.loads(pickle.dumps(handler))
        try:
            assert (copy.target, copy.level, copy.queue_size, copy.batch_size, copy.timeout) == (
                str(tmp_path / "wal"),
                logging.WARNING,
                7,
                3,
                2.0,
            )
            assert (copy.sent, copy.dropped) == (0, 0)
        finally:
            copy.close()
    finally:
        handler.close()
