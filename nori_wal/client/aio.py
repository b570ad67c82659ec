"""AsyncWalClient: the asyncio producer client, with Kafka-style coalescing of appends.

Every ``await client.append(record)`` frames its record at once (in this
process) and queues it; the queue is flushed on the next turn of the event
loop, so all appends issued in one turn -- ``asyncio.gather`` of 32 appends,
or 32 tasks woken by one burst of acks -- go out as ONE request, and appends
that wait behind ``max_in_flight`` outstanding requests are coalesced into
the next one. The writer validates and writes that request as one unit and
acknowledges it with one reply from which every record's Position is
computed. This is how a producer with many appends in flight gets past the
ceiling of one record per message (about 15k messages/s on two cores).

No ``zmq.asyncio``: the DEALER's file descriptor is watched with
``loop.add_reader`` and drained without blocking, one timer per connection
enforces ``timeout`` (no reply for ``timeout`` seconds -> every outstanding
append fails with WriterUnavailableError and the connection is dropped; the
next call builds a fresh one). A lost connection to the writer fails what is
outstanding at once. A connection belongs to one process and one event loop:
after ``fork`` or in another loop (``asyncio.run`` twice) a fresh one is built.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Iterable

import zmq

from .. import protocol as P
from ..codec import encode_record
from ..dedupe import AppendResult
from ..errors import WalClosedError, WalError, WriterUnavailableError
from ..position import Position
from ..record import Record
from .base import ClientBase, checked_position
from .retry import deliver_async, identity_frames, with_identity
from .session import Completion, Outcome, Session, append_results, batch_positions, batch_results
from .transport import Connection, close_context, current_pid, zmq_error


class _AsyncConn:
    """One connection used from one event loop in one process."""

    def __init__(self, client: AsyncWalClient, ctx: zmq.Context[Any], endpoint: str, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.loop = loop
        self.conn = Connection(ctx, endpoint, client.timeout)
        self.pid = self.conn.pid
        self.session: Session[asyncio.Future[Any]] = Session(client.max_in_flight)
        self.timeout = client.timeout
        self.closed = False
        self._flush_pending = False
        self._timer: asyncio.TimerHandle | None = None
        self._progress = 0.0  # time of the last reply, or of the first send after idle
        self._fd = self.conn.sock.FD
        self._mon_fd = self.conn.monitor.FD
        loop.add_reader(self._fd, self._on_readable)
        loop.add_reader(self._mon_fd, self._on_monitor)

    # -- sending ---------------------------------------------------------------------------

    def schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self.closed:
            return
        session = self.session
        now = time.monotonic()
        if session.in_flight == 0:
            self._progress = now
        sent = False
        try:
            while (frames := session.take(now)) is not None:
                self.conn.send(frames)
                sent = True
        except WalError as exc:
            self.reset(exc)
            return
        if sent:
            self._arm_timer()
            # A send can consume the socket's edge-triggered readiness: look for replies now.
            if int(self.conn.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self.loop.call_soon(self._on_readable)

    def control(self, op: P.Op, *args: int) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        if self.session.in_flight == 0:
            self._progress = time.monotonic()
        try:
            self.conn.send(self.session.control(op, fut, time.monotonic(), *args))
        except WalError as exc:
            self.reset(exc)
        else:
            self._arm_timer()
            if int(self.conn.sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                self.loop.call_soon(self._on_readable)
        return fut

    # -- receiving --------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self.closed:
            return
        sock, session = self.conn.sock, self.session
        got = False
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as exc:
                self.reset(zmq_error(exc, "receiving a reply", self.conn.endpoint))
                return
            got = True
            try:
                done = session.complete(data)
            except WalError as exc:
                self.reset(exc)
                return
            _settle(done)
        if got:
            self._progress = time.monotonic()
            if session.queued:
                self._flush()

    def _on_monitor(self) -> None:
        if self.closed:
            return
        if self.conn.check_lost():
            self.loop.remove_reader(self._mon_fd)
            self._on_readable()  # replies that arrived before the drop still count
            if not self.session.idle:
                self.reset(
                    WriterUnavailableError(
                        f"lost the connection to the writer at {self.conn.endpoint} (did it exit?); the outcome "
                        f"of the request(s) in flight is unknown"
                    )
                )

    # -- timeouts and teardown -----------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is None and not self.closed:
            self._timer = self.loop.call_at(self.loop.time() + self.timeout, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or self.session.in_flight == 0:
            return
        idle_for = time.monotonic() - self._progress
        if idle_for >= self.timeout:
            self.reset(
                WriterUnavailableError(
                    f"no reply from the writer at {self.conn.endpoint} within {self.timeout:g} s (is it running? "
                    f"the outcome of the {self.session.in_flight} request(s) in flight is unknown)"
                )
            )
        else:
            self._timer = self.loop.call_at(self.loop.time() + self.timeout - idle_for, self._on_timer)

    def reset(self, error: WalError) -> None:
        """Fail everything outstanding with ``error`` and close; the client builds a fresh connection."""
        if self.closed:
            return
        self.close()
        _settle(self.session.fail_all(error))
        self.client._forget(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pid == current_pid() and not self.loop.is_closed():
            self.loop.remove_reader(self._fd)
            self.loop.remove_reader(self._mon_fd)
        self.conn.close()


class _ContextCloser:
    """Closes connections in their own loops, then the context once the last one is closed."""

    def __init__(self, ctx: zmq.Context[Any] | None, pid: int):
        self.ctx, self.pid = ctx, pid
        self.pending = 1  # the caller's own part, plus connections other loops have to close
        self._lock = threading.Lock()

    def close(self, conn: _AsyncConn | None) -> None:
        """Close ``conn`` (in its loop) and fail its waiters; None: the caller's own part is done."""
        if conn is not None:
            conn.close()
            _settle(conn.session.fail_all(WalClosedError("the client was closed")))
        with self._lock:
            self.pending -= 1
            ctx = self.ctx if self.pending == 0 else None
        if ctx is not None:
            close_context(ctx, self.pid)


def _settle(done: list[Completion[asyncio.Future[Any]]]) -> None:
    shared = len(done) > 1
    for c in done:
        fut = c.waiter
        if fut.done():
            continue  # the caller was cancelled
        try:
            if c.error is None:
                fut.set_result(c.value)
            else:
                err = c.error
                if shared:  # one exception object per awaiting caller
                    fresh = type(err)(*err.args)
                    fresh.__cause__ = err.__cause__
                    err = fresh
                fut.set_exception(err)
        except RuntimeError:  # its event loop is closed
            pass


class AsyncWalClient(ClientBase[_AsyncConn]):
    """The asyncio producer: ``await`` the same calls as WalClient; concurrent appends are coalesced."""

    # -- the public calls ----------------------------------------------------------------

    async def append(self, record: Record) -> Position:
        """Append one record; its Position once acknowledged. Concurrent appends share requests.

        With ``delivery_timeout``: ``append_ex`` (the record keyed, retried while its outcome is unknown).
        """
        if self.delivery_timeout is not None:
            return (await self.append_ex(record)).position
        frame = encode_record(record)
        c = self._conn()
        fut = c.loop.create_future()
        c.session.queue_append((frame,), fut)
        c.schedule_flush()
        positions: list[Position] = await fut
        return positions[0]

    async def append_ex(self, record: Record) -> AppendResult:
        """``append``, also saying whether the record's key was already in the log (nothing written)."""
        dt = self.delivery_timeout
        if dt is None:
            return await self._append_once(encode_record(record))
        frame = encode_record(with_identity(record))
        return await deliver_async(lambda: self._append_once(frame), dt)

    async def _append_once(self, frame: bytes) -> AppendResult:
        c = self._conn()
        fut = c.loop.create_future()
        c.session.queue_append((frame,), fut)
        c.schedule_flush()
        return append_results(await fut)[0]

    async def append_batch_ex(self, records: Iterable[Record]) -> list[AppendResult]:
        """``append_batch`` with an ``AppendResult`` per record (see ``WalClient.append_batch_ex``)."""
        dt = self.delivery_timeout
        if dt is None:
            return await self._batch_results_once(list(map(encode_record, records)))
        frames = identity_frames(records)
        return await deliver_async(lambda: self._batch_results_once(frames), dt)

    async def _batch_results_once(self, frames: list[bytes]) -> list[AppendResult]:
        if not frames:
            if self._closed:
                raise WalClosedError("the client is closed")
            return []
        c = self._conn()
        batch = c.session.queue_batch(frames, c.loop.create_future)
        c.schedule_flush()
        if len(batch.waiters) == 1:
            return append_results(await batch.waiters[0])
        parts = await asyncio.gather(*batch.waiters, return_exceptions=True)
        for p in parts:
            if isinstance(p, BaseException) and not isinstance(p, WalError):
                raise p
        return batch_results(
            batch.counts, [Outcome(None, p) if isinstance(p, WalError) else Outcome(p, None) for p in parts]
        )

    async def append_batch(self, records: Iterable[Record]) -> list[Position]:
        """Append records in order; their Positions once acknowledged (one request per 16 MiB).

        A batch of up to 16 MiB of frames is one request, acknowledged or
        refused whole; it is also written whole when it fits in one segment (a
        larger one is split at a roll, and a failure part way can leave a
        prefix; so can a crash before the ack). A larger
        batch is split into several requests, which are NOT one unit: if one
        fails, those before it were already written (and later ones may be);
        the error raised then (the class of the failing request's
        error) says so and how many records -- the first k of the batch -- were
        acknowledged before the failing request. A batch with a frame too large
        for any request is refused before anything of it is queued.
        With ``delivery_timeout``: ``append_batch_ex`` (retried, every record keyed).
        """
        if self.delivery_timeout is not None:
            return [r.position for r in await self.append_batch_ex(records)]
        frames = list(map(encode_record, records))
        if not frames:
            if self._closed:
                raise WalClosedError("the client is closed")
            return []
        c = self._conn()
        batch = c.session.queue_batch(frames, c.loop.create_future)
        c.schedule_flush()
        if len(batch.waiters) == 1:  # the common case: one request
            positions: list[Position] = await batch.waiters[0]
            return positions
        parts = await asyncio.gather(*batch.waiters, return_exceptions=True)
        for p in parts:
            if isinstance(p, BaseException) and not isinstance(p, WalError):
                raise p  # CancelledError and the like, as they are
        outcomes = [Outcome(None, p) if isinstance(p, WalError) else Outcome(p, None) for p in parts]
        return batch_positions(batch.counts, outcomes)

    async def sync(self) -> None:
        """fsync everything the writer has written so far, whatever its policy.

        Appends already queued or in flight on this event loop's connection are
        sent and acknowledged first, so they are covered too (their errors, if
        any, go to their own callers).
        """
        c = self._conn()
        waiters = c.session.waiters()
        if waiters:
            c.schedule_flush()
            await asyncio.wait(waiters)  # not gather: cancelling sync must not cancel them
        await self._control(P.Op.SYNC)

    async def current_position(self) -> Position:
        """Where the writer will put the next record."""
        value: Position = await self._control(P.Op.POSITION)  # its shape checked by the session
        return value

    async def delete_segments_before(self, position: Position) -> int:
        """Delete whole segments before ``position``'s segment (never the active one); the count deleted
        (``last_gc`` says what consumers held back, as ``WalClient.delete_segments_before``)."""
        pos = checked_position(position)
        plan = await self._control(P.Op.GC, pos.segment_id, pos.offset)  # a GcPlan: its shape checked by the session
        return self.gc_done(pos, plan)

    async def info(self) -> dict[str, Any]:
        """What the writer says about itself (see ``WalClient.info``)."""
        value: dict[str, Any] = await self._control(P.Op.INFO)  # its shape checked by the session
        return value

    async def close(self) -> None:
        """Close every connection (linger 0). Idempotent.

        As ``WalClient.close`` does, appends queued or in flight on this event
        loop's connection are sent, acknowledged and made durable first
        (``sync``, bounded by ``timeout``), so closing does not drop them;
        whatever is still outstanding then fails with WalClosedError.
        """
        loop = asyncio.get_running_loop()
        mine = [c for c in self._conns if c.loop is loop and c.pid == current_pid() and not c.closed]
        if not self._closed and mine and not mine[-1].session.idle:
            try:
                await asyncio.wait_for(self.sync(), self.timeout)
            except (WalError, asyncio.TimeoutError):
                pass  # the appends still outstanding get their error below
        self.close_nowait()

    def close_nowait(self) -> None:
        """``close`` for code outside a coroutine.

        A connection of an event loop running in another thread is closed by
        that loop (a ZeroMQ socket must not be closed under the thread using
        it): its waiting calls fail at its next turn. The ZeroMQ context is
        terminated with the last connection.
        """
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
            ctx, self._ctx = self._ctx, None
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        pid = current_pid()
        closing = _ContextCloser(ctx, self._pid)
        for c in conns:
            if c.loop is not here and c.pid == pid and c.loop.is_running():
                closing.pending += 1
                try:
                    c.loop.call_soon_threadsafe(closing.close, c)
                    continue
                except RuntimeError:  # that loop closed meanwhile: nobody uses its socket
                    closing.pending -= 1
            c.close()
            _settle(c.session.fail_all(WalClosedError("the client was closed")))
        closing.close(None)

    async def __aenter__(self) -> AsyncWalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------------------------

    async def _control(self, op: P.Op, *args: int) -> Any:
        dt = self.delivery_timeout
        if dt is None:
            return await self._conn().control(op, *args)
        return await deliver_async(lambda: self._conn().control(op, *args), dt)

    def _conn(self) -> _AsyncConn:
        loop = asyncio.get_running_loop()
        pid = current_pid()
        if self._closed:
            raise WalClosedError("the client is closed")
        conns = self._conns
        if conns:
            c = conns[-1]
            if c.loop is loop and c.pid == pid and not c.conn.lost:
                return c
        with self._lock:
            self._check_process()  # closed: raises; forked: forgets the parent's connections
            for old in list(self._conns):
                if old.loop is loop and not old.closed and not old.conn.lost:
                    self._conns.remove(old)  # this loop's healthy connection: use it
                    self._conns.append(old)
                    return old
                if old.loop is loop or old.loop.is_closed():
                    if not old.session.idle and not old.closed:
                        old.reset(
                            WriterUnavailableError(
                                f"lost the connection to the writer at {old.conn.endpoint}; the outcome of the "
                                f"request(s) in flight is unknown"
                            )
                        )
                    old.close()
                    if old in self._conns:
                        self._conns.remove(old)
            ctx, endpoint = self._connection_target()
            c = _AsyncConn(self, ctx, endpoint, loop)
            self._conns.append(c)
            return c

    def _forget(self, c: _AsyncConn) -> None:
        with self._lock:
            if c in self._conns:
                self._conns.remove(c)
