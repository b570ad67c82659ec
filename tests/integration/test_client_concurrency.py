"""The clients under concurrency and failure: close while others wait, split batches, SYNC ordering,
fork with a held lock, cross-thread PendingAppend, position validation. Every wait is bounded (joins and
events with timeouts)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from typing import Any

import pytest
from writer_support import keys_in

from nori_wal import (
    FsyncPolicy,
    Position,
    ProtocolError,
    Record,
    RecordTooLargeError,
    WalClosedError,
    WalConfig,
    WalError,
    WriterUnavailableError,
)
from nori_wal.client import AsyncWalClient, WalClient
from nori_wal.position import make_position

MiB = 1 << 20


def rec(tag: str, i: int, size: int = 100) -> Record:
    return Record.put(f"{tag}-{i:05d}".encode(), b"v" * size)


# -- 1. close() while other threads wait for replies ----------------------------------------------------


@pytest.mark.timeout(60)
def test_close_while_other_threads_wait_for_replies_never_blocks(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    c = WalClient(w.endpoint, timeout=30)  # far longer than the test waits: only close can end their calls
    results: dict[str, Any] = {}
    connected = [threading.Event(), threading.Event()]

    def lane_append() -> None:  # ends blocked in the hot path's receive
        c.append(rec("t", 0))
        connected[0].set()
        i = 1
        while True:  # until the stopped writer leaves one unanswered
            try:
                c.append(rec("t", i))
            except Exception as exc:  # noqa: BLE001 - reported to the main thread
                results["lane"] = exc
                break
            i += 1
        try:
            c.append(rec("t", -1))
            results["lane-after"] = None
        except Exception as exc:  # noqa: BLE001
            results["lane-after"] = exc

    def pipelined() -> None:  # ends blocked in _wait's poll
        c.append(rec("p", 0))
        connected[1].set()
        i = 1
        while True:
            try:
                c.submit(rec("p", i)).result()
            except Exception as exc:  # noqa: BLE001
                results["submit"] = exc
                break
            i += 1

    threads = [threading.Thread(target=lane_append, daemon=True), threading.Thread(target=pipelined, daemon=True)]
    stopped = False
    try:
        for t in threads:
            t.start()
        for e in connected:
            assert e.wait(20)
        os.kill(w.pid, signal.SIGSTOP)  # the writer answers nothing now
        stopped = True
        closer = threading.Thread(target=c.close, daemon=True)
        closer.start()  # used to close their sockets from here and block in term
        closer.join(10)
        assert not closer.is_alive(), "close() blocked while other threads waited for replies"
        with pytest.raises(WalClosedError):
            c.append(rec("m", 1))  # promptly, in the closing thread
        with pytest.raises(WalClosedError):
            c.submit(rec("m", 2))
        for t in threads:
            t.join(10)  # each notices within a receive slice
            assert not t.is_alive()
    finally:
        if stopped:
            os.kill(w.pid, signal.SIGCONT)
        for t in threads:
            t.join(10)
    assert isinstance(results["lane"], WalClosedError)
    assert isinstance(results["lane-after"], WalClosedError)
    assert isinstance(results["submit"], WalClosedError)
    assert c._conns == [] and c._ctx is None  # the last thread out terminated the context
    c.close()  # idempotent


def _append_until_error(c: WalClient, started: threading.Barrier, errors: list[BaseException]) -> None:
    started.wait()
    try:
        while True:
            c.append(rec("x", 0))
    except Exception as exc:  # noqa: BLE001 - reported to the main thread
        errors.append(exc)


@pytest.mark.timeout(60)
def test_close_from_one_thread_while_others_append(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    for _ in range(5):
        c = WalClient(w.endpoint, timeout=30)
        errors: list[BaseException] = []
        started = threading.Barrier(4, timeout=20)

        threads = [
            threading.Thread(target=_append_until_error, args=(c, started, errors), daemon=True) for _ in range(3)
        ]
        for t in threads:
            t.start()
        started.wait()
        c.append(rec("main", 0))
        c.close()
        for t in threads:
            t.join(10)
            assert not t.is_alive()
        assert len(errors) == 3 and all(isinstance(e, WalClosedError) for e in errors), errors
        assert c._ctx is None


@pytest.mark.timeout(60)
def test_async_close_from_another_loop_fails_that_loops_waiting_call_at_once(spawn_writer, wal_dir):
    """The waiting loop closes its own socket (never closed under its thread) and its call ends then,
    with WalClosedError, not at the client's timeout."""
    w = spawn_writer(wal_dir)
    c = AsyncWalClient(w.endpoint, timeout=60)  # far longer than the test waits: only close can end the call
    in_flight = threading.Event()
    result: list[BaseException | Position] = []

    def other_loop() -> None:
        async def run() -> None:
            await c.append(rec("b", 0))
            os.kill(w.pid, signal.SIGSTOP)  # the writer cannot answer the next append
            task = asyncio.ensure_future(c.append(rec("b", 1)))
            await asyncio.sleep(0)  # a loop turn: the append is sent
            await asyncio.sleep(0)
            in_flight.set()
            try:
                result.append(await task)
            except BaseException as exc:  # noqa: BLE001
                result.append(exc)

        asyncio.run(run())

    t = threading.Thread(target=other_loop)
    t.start()
    try:
        assert in_flight.wait(20)
        asyncio.run(c.close())
        t.join(30)
    finally:
        os.kill(w.pid, signal.SIGCONT)
    assert not t.is_alive()
    assert len(result) == 1 and isinstance(result[0], WalClosedError)


# -- 2./3. batches over 16 MiB ----------------------------------------------------------------------------


def _orphan_batch() -> list[Record]:
    # 20 MiB in two chunks, then a record no request can carry (> 64 MiB)
    return [rec("k", i, MiB) for i in range(20)] + [Record.put(b"big", b"y" * (65 * MiB))]


@pytest.mark.timeout(120)
def test_a_refused_split_batch_leaves_nothing_queued(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=30) as c:
        before = c.current_position()
        with pytest.raises(RecordTooLargeError):
            c.append_batch(_orphan_batch())
        assert c.append(rec("next", 0)) == before  # none of the batch went out with this call
        assert c.current_position() > before
    assert keys_in(wal_dir) == [rec("next", 0).key]


@pytest.mark.timeout(120)
def test_a_refused_split_batch_leaves_nothing_queued_async(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)

    async def main() -> None:
        async with AsyncWalClient(w.endpoint, timeout=30) as a:
            before = await a.current_position()
            with pytest.raises(RecordTooLargeError):
                await a.append_batch(_orphan_batch())
            assert await a.append(rec("next", 0)) == before

    asyncio.run(main())
    assert keys_in(wal_dir) == [rec("next", 0).key]


def _partial_writer(spawn_writer: Any, wal_dir: str) -> Any:
    return spawn_writer(WalConfig(dir=wal_dir, fsync_policy=FsyncPolicy.always(), max_segment_size=12 * MiB))


def _partial_batch() -> list[Record]:
    # 8 x 1 MiB: the first request; then a record larger than a 12 MiB segment (within the 16 MiB request
    # limit, so the client sends it): the writer refuses it
    return [rec("k", i, MiB) for i in range(8)] + [Record.put(b"big", b"y" * (13 * MiB))]


def _check_partial(exc: RecordTooLargeError, wal_dir: str) -> None:
    msg = str(exc)
    keys = keys_in(wal_dir)
    assert 0 < len(keys) < 17 and keys == [rec("k", i).key for i in range(len(keys))]
    assert "split into" in msg and "not one unit" in msg
    assert f"the first {len(keys)} record(s)" in msg and "were acknowledged" in msg
    assert isinstance(exc.__cause__, RecordTooLargeError)


@pytest.mark.timeout(120)
def test_a_split_batch_failing_late_says_what_was_written(spawn_writer, wal_dir):
    w = _partial_writer(spawn_writer, wal_dir)
    with WalClient(w.endpoint, timeout=30) as c:
        with pytest.raises(RecordTooLargeError) as info:
            c.append_batch(_partial_batch())
    _check_partial(info.value, wal_dir)


@pytest.mark.timeout(120)
def test_a_split_batch_failing_late_says_what_was_written_async(spawn_writer, wal_dir):
    w = _partial_writer(spawn_writer, wal_dir)

    async def main() -> RecordTooLargeError:
        async with AsyncWalClient(w.endpoint, timeout=30) as a:
            with pytest.raises(RecordTooLargeError) as info:
                await a.append_batch(_partial_batch())
            return info.value

    _check_partial(asyncio.run(main()), wal_dir)


# -- 4. SYNC never overtakes this thread's queued appends --------------------------------------------------


@pytest.mark.timeout(60)
def test_sync_covers_appends_submitted_before_it(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir, policy="os")  # only SYNC fsyncs
    c = WalClient(w.endpoint, timeout=30, max_in_flight=1)
    p1 = c.submit(rec("r", 1, MiB))  # sent: the window is full
    p2 = c.submit(rec("r", 2, MiB))  # waits in this thread's queue
    c.sync()
    durable = Position(*c.info()["durable"])
    end = c.current_position()
    assert p1.result() < p2.result() < durable and durable == end
    c.close()


@pytest.mark.timeout(60)
def test_async_sync_covers_appends_queued_before_it(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir, policy="os")

    async def main() -> None:
        async with AsyncWalClient(w.endpoint, timeout=30, max_in_flight=1) as a:
            t1 = asyncio.ensure_future(a.append(rec("r", 1, MiB)))
            t2 = asyncio.ensure_future(a.append(rec("r", 2, MiB)))
            await asyncio.sleep(0)  # one loop turn: both are queued
            await a.sync()
            durable = Position(*(await a.info())["durable"])
            assert await t1 < await t2 < durable
            assert durable == await a.current_position()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_async_close_sends_and_acknowledges_what_is_queued_first(spawn_writer, wal_dir):
    """As WalClient.close does: appends queued on the loop when close() is called are not dropped."""
    w = spawn_writer(wal_dir, policy="os")

    async def main() -> list[Any]:
        a = AsyncWalClient(w.endpoint, timeout=30)
        await a.append(rec("first", 0))
        tasks = [asyncio.ensure_future(a.append(rec("q", i))) for i in range(50)]
        await asyncio.sleep(0)  # one loop turn: all are queued
        await a.close()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, Position) for r in results), results
    with WalClient(w.endpoint, timeout=30) as c:
        assert Position(*c.info()["durable"]) == c.current_position()  # and made durable (policy os)
    assert len(keys_in(wal_dir)) == 51


# -- 5. fork while another thread holds a client's lock --------------------------------------------------


@pytest.mark.timeout(60)
def test_a_fork_while_another_thread_holds_the_lock(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    c = WalClient(w.endpoint, timeout=10)
    a = AsyncWalClient(w.endpoint, timeout=10)
    c.append(rec("parent", 0))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with c._lock, a._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(20)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - reports by exit code
            code = 1
            try:
                c.append(rec("child", 0))
                code = 2
                asyncio.run(a.append(rec("child", 1)))
                code = 0
            finally:
                os._exit(code)
    finally:
        release.set()
        holder.join(10)
    status: list[int] = []
    waiter = threading.Thread(target=lambda: status.append(os.waitpid(pid, 0)[1]), daemon=True)
    waiter.start()
    waiter.join(30)
    if waiter.is_alive():  # the child hangs: kill it, then fail
        os.kill(pid, signal.SIGKILL)
        waiter.join(10)
        pytest.fail("the forked child blocked on a lock held by a parent thread at the fork")
    assert os.waitstatus_to_exitcode(status[0]) == 0
    assert c.append(rec("parent", 1)) > Position(0, 32)
    c.close()
    a.close_nowait()


# -- 6. a record refused among pipelined appends --------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_refused_record_between_pipelined_appends_keeps_the_others_in_order(spawn_writer, wal_dir):
    """A record too large for this writer's segments, submitted between small ones, fails alone; the
    small ones land in the order submitted (a resent part of a refused request would land last)."""
    w = spawn_writer(WalConfig(dir=wal_dir, max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always()))
    big = Record.put(b"big", b"x" * 100_000)  # more than a 64 KiB segment holds, less than 1 MiB
    with WalClient(w.endpoint, timeout=30) as c:
        p1, p2 = c.submit(rec("k", 1)), c.submit(big)
        p1.done()  # sends what is queued
        p3 = c.submit(rec("k", 2))
        p3.done()  # sent while the first request(s) are in flight
        with pytest.raises(RecordTooLargeError):
            p2.result()
        assert p1.result() < p3.result()

    async def pipelined() -> None:
        ac = AsyncWalClient(w.endpoint, timeout=30)
        first = asyncio.ensure_future(ac.append(rec("a", 1)))
        refused = asyncio.ensure_future(ac.append(big))
        await asyncio.sleep(0)  # a loop turn: what is queued goes out
        await asyncio.sleep(0)
        last = asyncio.ensure_future(ac.append(rec("a", 2)))
        results = await asyncio.gather(first, refused, last, return_exceptions=True)
        assert isinstance(results[1], RecordTooLargeError)
        assert results[0] < results[2]
        await ac.close()

    asyncio.run(pipelined())
    assert keys_in(wal_dir) == [rec("k", 1).key, rec("k", 2).key, rec("a", 1).key, rec("a", 2).key]


# -- 7. PendingAppend belongs to the submitting thread --------------------------------------------------


@pytest.mark.timeout(60)
def test_pending_append_results_only_in_the_submitting_thread(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=30) as c:
        p = c.submit(rec("s", 0))
        errors: list[BaseException] = []

        def other() -> None:
            for call in (p.result, p.done):
                try:
                    call()
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join(20)
        assert not t.is_alive()
        assert len(errors) == 2
        assert all(type(e) is WalError and "thread that submitted it" in str(e) for e in errors)
        assert p.result() == Position(0, 32)  # the submitting thread still collects it
        assert p.done()
        answered: list[Any] = []
        t = threading.Thread(target=lambda: answered.append((p.done(), p.result())))
        t.start()  # once answered, any thread may read it
        t.join(20)
        assert answered == [(True, Position(0, 32))]


@pytest.mark.timeout(60)
def test_a_pending_append_of_a_thread_that_ended_is_not_driven_by_its_successor(spawn_writer, wal_dir):
    """A new thread often gets a dead thread's id; that must not make it the owner of the dead one's socket."""
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=30) as c:
        pending: list[Any] = []
        t = threading.Thread(target=lambda: pending.append(c.submit(rec("dead", 0))))
        t.start()
        t.join(20)
        errors: list[BaseException] = []

        def successor() -> None:
            try:
                pending[0].result()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=successor)
        t.start()
        t.join(20)
        assert len(errors) == 1 and "thread that submitted it" in str(errors[0])


# -- 8. short-lived threads ------------------------------------------------------------------------------


def _threads_that_append_and_end(endpoint: str, pairs: int) -> None:
    """Pairs of threads that append a few records each and end (a thread per task, as socketserver does).

    Run in a child: a thread that reused a dead thread's socket while another thread closed it
    aborted the process in libzmq (``Assertion failed: pfd.revents & POLLIN``).
    """
    c = WalClient(endpoint, timeout=30)
    failures: list[BaseException] = []

    def task(i: int) -> None:
        try:
            for k in range(3):
                c.append(rec(f"t{i}", k))
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    for n in range(pairs):
        threads = [threading.Thread(target=task, args=(2 * n + j,)) for j in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    c.close()
    os._exit(1 if failures else 0)


@pytest.mark.timeout(120)
def test_short_lived_threads_never_share_a_socket(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir, policy="os")
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_threads_that_append_and_end, args=(w.endpoint, 300))
    child.start()
    child.join(100)
    assert child.exitcode == 0  # not -6 (SIGABRT), not 1 (a failed append)
    assert len(keys_in(wal_dir)) == 300 * 2 * 3


# -- 9. positions out of the protocol's range ---------------------------------------------------------


# Built unchecked (Position() itself refuses them, test_validation.py): what a client is handed by code that
# skips the constructor (tuple.__new__, a decoded message) must still be refused before it is sent.
BAD_POSITIONS = [make_position(p) for p in ((2**64, 0), (0, 2**64), (-1, 0), (0, -1))]


@pytest.mark.timeout(60)
def test_delete_segments_before_validates_the_position(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=30) as c:
        for bad in BAD_POSITIONS:
            with pytest.raises(ProtocolError, match="out of range"):
                c.delete_segments_before(bad)
        with pytest.raises(TypeError):
            c.delete_segments_before((1.5, 0))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="past the end"):  # the largest valid: carried, but past the end
            c.delete_segments_before(Position(2**64 - 1, 0))
        assert c.append(rec("after", 0)) == Position(0, 32)  # the connection is unharmed

    async def main() -> None:
        async with AsyncWalClient(w.endpoint, timeout=30) as a:
            for bad in BAD_POSITIONS:
                with pytest.raises(ProtocolError, match="out of range"):
                    await a.delete_segments_before(bad)
            assert await a.delete_segments_before(Position(0, 0)) == 0

    asyncio.run(main())


def test_every_call_after_close_raises_even_an_empty_batch(spawn_writer, wal_dir):
    w = spawn_writer(wal_dir)
    c = WalClient(w.endpoint, timeout=30)
    c.append(rec("k", 0))
    c.close()
    for call in (lambda: c.append_batch([]), lambda: c.append(rec("k", 1)), c.sync):
        with pytest.raises(WalClosedError):
            call()

    async def closed_async() -> None:
        a = AsyncWalClient(w.endpoint, timeout=30)
        await a.append(rec("a", 0))
        await a.close()
        with pytest.raises(WalClosedError):
            await a.append_batch([])

    asyncio.run(closed_async())


def test_a_client_refuses_what_is_not_a_record_before_sending_and_serves_on(spawn_writer, wal_dir):
    from nori_wal import InvalidRecordError

    w = spawn_writer(wal_dir)
    with WalClient(w.endpoint, timeout=30) as c:
        first = c.append(rec("k", 0))
        for call in (
            lambda: c.append("notarecord"),
            lambda: c.append_batch([rec("k", 1), None]),
            lambda: c.submit(Record(b"k", "v")),
        ):
            with pytest.raises(InvalidRecordError, match="not a valid Record"):
                call()
        assert c.append(rec("k", 2)) > first

    async def main() -> None:
        async with AsyncWalClient(w.endpoint, timeout=30) as a:
            with pytest.raises(InvalidRecordError):
                await a.append("notarecord")
            await a.append(rec("a", 0))

    asyncio.run(main())
    assert keys_in(wal_dir) == [rec("k", 0).key, rec("k", 2).key, rec("a", 0).key]


@pytest.mark.timeout(120)
def test_every_call_to_a_writer_that_stopped_answering_raises_writer_unavailable(spawn_writer, wal_dir):
    """A writer alive but silent (SIGSTOP): no call hangs; each raises WriterUnavailableError after its
    timeout, and once the writer answers again, a new call reaches it."""
    w = spawn_writer(wal_dir)
    c = WalClient(w.endpoint, timeout=0.5)
    first = c.append(rec("k", 0))
    calls = {
        "append": lambda: c.append(rec("k", 1)),
        "append_batch": lambda: c.append_batch([rec("k", 2)]),
        "sync": c.sync,
        "current_position": c.current_position,
        "delete_segments_before": lambda: c.delete_segments_before(first),
        "info": c.info,
    }
    os.kill(w.pid, signal.SIGSTOP)
    try:
        for call in calls.values():
            with pytest.raises(WriterUnavailableError):
                call()

        async def silent() -> None:
            a = AsyncWalClient(w.endpoint, timeout=0.5)
            try:
                for make in (lambda: a.append(rec("a", 0)), a.sync, a.current_position):
                    with pytest.raises(WriterUnavailableError):
                        await make()
            finally:
                a.close_nowait()

        asyncio.run(silent())
    finally:
        os.kill(w.pid, signal.SIGCONT)
    assert c.append(rec("k", 3)) > first
    c.close()
