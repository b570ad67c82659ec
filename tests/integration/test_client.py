"""The producer clients across processes: pools, fork/spawn/forkserver, pickling, timeouts, reconnects, asyncio."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest
from writer_support import keys_in

from nori_wal import (
    Position,
    ProtocolError,
    Record,
    RecordTooLargeError,
    WalClosedError,
    WriterUnavailableError,
    open_reader,
)
from nori_wal import protocol as P
from nori_wal.client import AsyncWalClient, WalClient
from nori_wal.endpoint_file import find_writer, read_endpoint_file, write_endpoint_file
from nori_wal.position import make_position

PER_WORKER = 40


def rec(tag: str, i: int) -> Record:
    return Record.put(f"{tag}-{i:05d}".encode(), (f"{tag}:{i}" * 20).encode())


def work(args: tuple[WalClient, str]) -> list[tuple[bytes, Position]]:
    """A pool task: append with the client it was given (inherited through fork, or pickled)."""
    client, tag = args
    out = []
    for i in range(PER_WORKER):
        r = rec(tag, i)
        pos = client.append(r) if i % 4 else client.append_batch([r, rec(tag + "b", i)])[0]
        out.append((r.key, pos))
    return out


def check_log(directory: str, results: list[list[tuple[bytes, Position]]]) -> None:
    """Every position unique, and every record readable at the position its producer was given."""
    positions = [p for chunk in results for _, p in chunk]
    assert len(positions) == len(set(positions))
    at = {}
    with open_reader(directory) as r:
        for record, pos in r:
            at[pos] = record
    for chunk in results:
        for key, pos in chunk:
            assert at[pos].key == key


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_workers_append_concurrently(spawn_writer, wal_dir, method):
    spawn_writer(wal_dir)
    client = WalClient.for_dir(wal_dir, timeout=20)
    client.append(rec("parent", 0))  # the parent's socket exists before the fork
    ctx = mp.get_context(method)
    with ctx.Pool(3) as pool:
        results = pool.map(work, [(client, f"{method}{t}") for t in range(6)], chunksize=1)
    check_log(wal_dir, results)
    assert client.append(rec("parent", 1)) > Position(0, 0)  # still usable in the parent
    client.close()


def test_process_pool_executor(spawn_writer, wal_dir):
    spawn_writer(wal_dir)
    client = WalClient.for_dir(wal_dir, timeout=20)
    with ProcessPoolExecutor(3, mp_context=mp.get_context("spawn")) as ex:
        results = list(ex.map(work, [(client, f"ex{t}") for t in range(4)]))
    check_log(wal_dir, results)
    client.close()


def test_threads_share_one_client(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    client = WalClient(w.endpoint, timeout=20)
    results: list[list[tuple[bytes, Position]]] = []
    threads = [threading.Thread(target=lambda t=t: results.append(work((client, f"t{t}")))) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6
    check_log(wal_dir, results)
    client.close()


def test_client_pickles_as_its_constructor_arguments(tmp_path):
    c = WalClient("tcp://127.0.0.1:5999", timeout=3.5, max_in_flight=3)
    c2 = pickle.loads(pickle.dumps(c))
    assert (c2.endpoint, c2.timeout, c2.max_in_flight) == ("tcp://127.0.0.1:5999", 3.5, 3)
    d = WalClient.for_dir(str(tmp_path), timeout=2)
    assert pickle.loads(pickle.dumps(d))._dir == str(tmp_path)
    a = pickle.loads(pickle.dumps(AsyncWalClient("ipc:///x", timeout=4)))
    assert type(a) is AsyncWalClient and a.timeout == 4
    for x in (c, c2, d, a):
        x.close() if isinstance(x, WalClient) else x.close_nowait()


# -- no writer, a restarted writer ----------------------------------------------------------------


def _dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.mark.parametrize("writer_file", ["missing", "dead pid"])
def test_for_dir_without_a_live_writer_fails_at_once_saying_so(tmp_path, writer_file):
    """No DIR/WRITER, or one naming a dead pid: WriterUnavailableError at once, not after ``timeout``.

    The timeout (60 s) would say "no reply ... within 60 s"; the error names the directory and the reason.
    """
    d = str(tmp_path / "wal")
    os.makedirs(d)
    if writer_file == "dead pid":
        write_endpoint_file(d, f"ipc://{tmp_path}/gone.sock", _dead_pid())
        reason = "which is not running"
    else:
        reason = "no readable WRITER file"
    assert find_writer(d).endpoint is None and reason in find_writer(d).reason
    with WalClient.for_dir(d, timeout=60) as c:
        for call in (lambda: c.append(rec("x", 0)), lambda: c.append_batch([rec("x", 1)]), c.info):
            with pytest.raises(WriterUnavailableError, match=f"no writer is serving {d}.*{reason}"):
                call()

    async def main() -> None:
        async with AsyncWalClient.for_dir(d, timeout=60) as a:
            with pytest.raises(WriterUnavailableError, match=reason):
                await a.append(rec("y", 0))
            with pytest.raises(WriterUnavailableError, match=reason):
                await a.sync()

    asyncio.run(main())


def test_for_dir_fails_at_once_after_its_writer_was_killed_and_reaches_the_next_one(tmp_path, spawn_writer):
    """A killed writer leaves DIR/WRITER behind: the next call says its pid is gone; a new writer is found."""
    d = str(tmp_path / "wal")
    w = spawn_writer(d)
    with WalClient.for_dir(d, timeout=60) as c:
        first = c.append(rec("a", 0))
        w.kill()
        assert read_endpoint_file(d) is not None  # left behind
        with pytest.raises(WriterUnavailableError):
            c.append(rec("a", 1))  # the lost connection (the outcome is unknown) ...
        with pytest.raises(WriterUnavailableError, match="which is not running"):
            c.append(rec("a", 2))  # ... then at once: nobody serves the directory
        spawn_writer(d)
        assert c.append(rec("a", 3)) > first


def test_no_writer_raises_writer_unavailable(tmp_path):
    with WalClient(f"ipc://{tmp_path}/nobody.sock", timeout=0.3) as c:
        with pytest.raises(WriterUnavailableError, match="within 0.3 s"):
            c.append(rec("x", 0))
        with pytest.raises(WriterUnavailableError):
            c.current_position()
    with WalClient.for_dir(str(tmp_path / "nowal"), timeout=0.3) as c:
        with pytest.raises(WriterUnavailableError):
            c.append_batch([rec("x", 1)])

    async def main() -> None:
        async with AsyncWalClient(f"ipc://{tmp_path}/nobody.sock", timeout=0.3) as a:
            results = await asyncio.gather(*[a.append(rec("y", i)) for i in range(5)], return_exceptions=True)
            assert all(isinstance(r, WriterUnavailableError) for r in results)
            with pytest.raises(WriterUnavailableError):
                await a.sync()

    asyncio.run(main())


def test_the_next_call_reaches_a_restarted_writer(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir, endpoint="tcp://127.0.0.1:*")
    client = WalClient.for_dir(wal_dir, timeout=5)
    aclient = AsyncWalClient.for_dir(wal_dir, timeout=5)
    first = client.append(rec("a", 0))
    asyncio.run(aclient.append(rec("a", 1)))
    w.stop()
    spawn_writer(wal_dir, endpoint="tcp://127.0.0.1:*")  # another port: found again via DIR/WRITER
    assert client.append(rec("a", 2)) > first
    assert asyncio.run(aclient.append(rec("a", 3))) > first
    client.close()
    aclient.close_nowait()
    assert keys_in(wal_dir) == [rec("a", i).key for i in range(4)]


def test_writer_errors_come_back_as_their_class(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=5) as c:
        with pytest.raises(ProtocolError, match="negative"):
            c.delete_segments_before(make_position((-1, 0)))  # Position() refuses it itself
        assert c.delete_segments_before(Position(0, 0)) == 0
        c.append(rec("ok", 0))
    with pytest.raises(WalClosedError):
        c.append(rec("closed", 0))


def test_a_record_too_large_for_a_request_is_refused_before_sending(spawn_writer, wal_dir, monkeypatch):
    """RecordTooLargeError on the first append and on the hot path; nothing sent; the connection serves on."""
    w = spawn_writer(wal_dir)
    monkeypatch.setattr(P, "MAX_PAYLOAD_BYTES", 65_000)  # the real limit is 64 MiB: same code path
    big = Record.put(b"big", b"x" * 70_000)
    with WalClient(w.endpoint, timeout=5) as c:
        with pytest.raises(RecordTooLargeError, match="65000-byte limit"):
            c.append(big)  # the general path (no connection yet)
        for i in range(3):
            c.append(rec("ok", i))  # the lane is armed from the second append on
        with pytest.raises(RecordTooLargeError, match="65000-byte limit"):
            c.append(big)
        last = c.append(rec("ok", 3))
    assert keys_in(wal_dir) == [rec("ok", i).key for i in range(4)] and last > Position(0, 0)


# -- asyncio -----------------------------------------------------------------------------------------


def test_async_client_coalesces_and_every_record_lands(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    records = [rec("g", i) for i in range(300)]

    async def main() -> list[Position]:
        async with AsyncWalClient(w.endpoint, timeout=10, max_in_flight=2) as a:
            positions = []
            for k in range(0, 300, 100):
                positions += await asyncio.gather(*[a.append(r) for r in records[k : k + 100]])
            batch = await a.append_batch([rec("b", i) for i in range(10)])
            await a.sync()
            assert await a.current_position() > batch[-1]
            return positions

    positions = asyncio.run(main())
    assert positions == sorted(positions) and len(set(positions)) == 300  # one gather: call order
    with open_reader(wal_dir) as r:
        got = {pos: record for record, pos in r}
    assert [got[p] for p in positions] == records


def test_async_client_survives_event_loops_and_sliding_windows(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    a = AsyncWalClient(w.endpoint, timeout=10)

    async def window(tag: str) -> list[Position]:
        out: list[Position] = []

        async def worker(k: int) -> None:
            for i in range(20):
                out.append(await a.append(rec(f"{tag}{k}", i)))

        await asyncio.gather(*[worker(k) for k in range(8)])
        return out

    first = asyncio.run(window("x"))
    second = asyncio.run(window("y"))  # a new loop: a fresh connection
    a.close_nowait()
    assert len(set(first + second)) == 320 and min(second) > max(first)


def test_submit_pipelines_synchronous_appends(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=10, max_in_flight=4) as c:
        pending = [c.submit(rec("p", i)) for i in range(200)]
        positions = [p.result() for p in pending]
    assert positions == sorted(positions) and len(set(positions)) == 200
    assert keys_in(wal_dir) == [rec("p", i).key for i in range(200)]


def test_submitted_appends_go_out_together_when_collected_or_polled(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=10) as c:
        first = [c.submit(rec("s", i)) for i in range(10)]
        assert [p.result() for p in first] == sorted(p.result() for p in first)  # result() sends them
        polled = c.submit(rec("s", 10))
        while not polled.done():  # done() alone drives the connection: the append gets out
            pass
        later = c.submit(rec("s", 11))
        last = c.append(rec("s", 12))  # another call sends what is queued first, in order
        positions = [p.result() for p in first] + [polled.result(), later.result(), last]
    assert positions == sorted(positions) and len(set(positions)) == 13
    assert keys_in(wal_dir) == [rec("s", i).key for i in range(13)]


def test_close_sends_and_acknowledges_submits_never_collected(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    c = WalClient(w.endpoint, timeout=10)
    pending = [c.submit(rec("u", i)) for i in range(20)]
    c.close()  # nothing collected: close still writes them, durably
    assert keys_in(wal_dir) == [rec("u", i).key for i in range(20)]
    positions = [p.result() for p in pending]
    assert positions == sorted(positions) and len(set(positions)) == 20


def test_a_forked_child_never_touches_the_parents_sockets(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    client = WalClient(w.endpoint, timeout=10)
    for i in range(3):
        client.append(rec("parent", i))  # the parent's appends now take the lane (the hot path)
    assert client._local.lane.until > 0  # armed
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports by exit code
        code = 1
        try:
            if client._local.lane.until != 0:  # the fork hook must disarm it: it holds the parent's socket
                os._exit(3)
            code = 0 if client.append(rec("child", 0)) > Position(0, 32) else 2
            client.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.append(rec("parent", 3)) > Position(0, 32)
    client.close()
