"""WalClient: the blocking producer client.

Each call frames its records in this process (``codec.encode_record``:
framing, CRC32C, compression), sends one request and waits for the writer's
acknowledgement, which comes once the record is as durable as the writer's
fsync policy promises. A synchronous ``append`` takes a short hot path (see
``WalClient.append``): on a busy two-core machine the producers' Python,
run with cold caches after every wait, is what limits throughput.

Process and thread safety (diskcache's model): the client holds no socket
until first used; each thread gets its own DEALER connection (ZeroMQ sockets
are not thread-safe, and separate connections let one process's threads share
the writer's group commit); a fork is noticed on the first call in the child
(an at-fork hook disarms the hot path, the general path compares PIDs) and
the child builds its own context and sockets. It pickles as its constructor
arguments, so it can be passed to ``spawn``/``forkserver`` children,
``multiprocessing.Pool`` and ``ProcessPoolExecutor`` workers.

Timeouts: when no reply arrives for ``timeout`` seconds, or the connection to
the writer is lost while a request is outstanding, the call raises
WriterUnavailableError and the connection is dropped; the next call builds a
fresh one (reaching a restarted writer). The outcome of a request that timed
out is unknown: the writer may have written it.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterable, Sequence

import zmq

from .. import protocol as P
from ..codec import encode_record, encode_with_key
from ..dedupe import AppendResult
from ..errors import RecordTooLargeError, WalClosedError, WalError, WriterUnavailableError
from ..position import Position
from ..protocol import (
    APPEND_COUNT_TAG,
    APPEND_HEADER,
    APPEND_PREFIX,
    RUN_REPLY,
    RUN_REPLY_SIZE,
    RUN_REPLY_TAGS,
)
from ..record import Record
from .base import ClientBase, checked_position
from .retry import auto_key, deliver, identity_frames, redeliver, with_identity
from .session import (
    MAX_REQUEST_BYTES,
    Outcome,
    Session,
    append_results,
    batch_keyed_positions,
    batch_positions,
    one_position,
    positions_of,
)
from .transport import (
    EVENTS,
    NOBLOCK,
    POLLIN,
    RECV_SLICE_MS,
    ZERO_COPY_BYTES,
    Connection,
    close_context,
    current_pid,
    send_frame,
    zmq_error,
)

_tuple_new = tuple.__new__


_monotonic = time.monotonic
_pack_header = APPEND_HEADER.pack
_unpack_run = RUN_REPLY.unpack


class _Slot:
    """What one call waits for."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: WalError | None = None


class _ThreadConn:
    """One thread's connection and session; also the lane of ``WalClient.append``'s hot path.

    The hot path reads ``until``, ``new_id`` and ``sock`` only: a
    synchronous producer's append touches as few objects as possible (its
    Python runs with cold caches after every wait on a busy machine).
    """

    __slots__ = ("conn", "new_id", "pid", "poll_items", "session", "sock", "thread", "until")

    def __init__(self, conn: Connection, max_in_flight: int):
        self.thread = threading.current_thread()
        self.conn = conn
        self.sock = conn.sock
        self.session: Session[_Slot] = Session(max_in_flight)
        self.new_id = self.session.new_id
        self.poll_items = [(conn.sock, POLLIN), (conn.monitor, POLLIN)]
        self.pid = conn.pid
        self.until = 0.0  # the lane serves appends until this monotonic time (the next disconnect check)


class PendingAppend:
    """An append sent by ``WalClient.submit``; ``result()`` waits for its Position."""

    __slots__ = ("_client", "_frame", "_slot", "_started", "_tc")

    def __init__(self, client: WalClient, slot: _Slot, tc: _ThreadConn, frame: bytes, started: float):
        self._client, self._slot, self._tc = client, slot, tc
        self._frame, self._started = frame, started  # for a retry (``delivery_timeout``)

    def done(self) -> bool:
        """True once answered; sends this thread's queued appends and takes in replies already here.

        Until it is answered, only in the thread that submitted it (that thread's
        connection is driven): another thread gets a WalError.
        """
        self._check_thread()
        if not self._slot.done:
            try:
                self._client._pump(self._tc)
            except WalError:
                pass  # the connection was reset: every append on it, this one too, has its error
        return self._slot.done

    def result(self) -> Position:
        """The record's Position once acknowledged; raises its WalError otherwise.

        Until it is answered, only in the thread that submitted it (see ``done``).
        With ``delivery_timeout``, an append whose outcome became unknown is
        sent again (same key) until ``delivery_timeout`` after ``submit``.
        """
        return self.result_ex().position

    def result_ex(self) -> AppendResult:
        """``result``, also saying whether the record's key was already in the log (nothing written)."""
        self._check_thread()
        if not self._slot.done:
            self._client._wait(self._tc, (self._slot,))
        err = self._slot.error
        if err is None:
            return append_results(self._slot.value)[0]
        client, dt = self._client, self._client.delivery_timeout
        if dt is None or not isinstance(err, WriterUnavailableError):
            raise err
        frames = [self._frame]
        return append_results(redeliver(err, lambda: client._batch_once(frames), dt, self._started))[0]

    def _check_thread(self) -> None:
        # By identity, not thread id: CPython reuses a dead thread's id at once, and a dead
        # thread's connection may be closed by another thread at any moment.
        if not self._slot.done and getattr(self._client._local, "tc", None) is not self._tc:
            raise WalError(
                "a PendingAppend's result must be collected in the thread that submitted it "
                "(each thread has its own connection, which only that thread may drive)"
            )


class WalClient(ClientBase[_ThreadConn]):
    """A producer: appends records through the writer process serving one endpoint."""

    def _init_connections(self) -> None:
        self._local = threading.local()  # this thread's connection

    def _after_fork(self) -> None:
        """In a forked child: a fresh lock, and every lane disarmed (they hold the parent's sockets)."""
        super()._after_fork()
        self._disarm_all()

    def _disarm_all(self) -> None:
        for tc in self._conns:
            tc.until = 0.0

    # -- the public calls ----------------------------------------------------------------

    def append(self, record: Record) -> Position:
        """Append one record; returns its Position once the writer acknowledged it."""
        # The hot path of a synchronous producer, through the lane: this thread's connection, kept
        # in thread-local storage (which dies with the thread: a new thread that gets a dead one's id
        # never finds its socket), armed only while its session is idle and until its next disconnect
        # check is due (``until``); this thread's other calls disarm it (``_thread_conn``), and so do
        # close, a reset and a fork. One compact APPEND (header and frame in one buffer), one
        # blocking receive, one struct call to read the ack. Anything else -- a thread's first call, a
        # check due, a large record, an error reply, a timeout -- takes the general path, with the
        # same guarantees. With delivery_timeout the record is keyed and its first attempt takes the
        # same path; an attempt whose outcome is unknown is sent again (retry.py).
        dt = self.delivery_timeout
        if dt is None:
            return self._append_once(record, None)
        started, idem = _monotonic(), record[5] if record[5] is not None else auto_key()
        try:
            return self._append_once(record, idem)
        except WriterUnavailableError as exc:
            return redeliver(exc, lambda: self._batch_once([encode_with_key(record, idem)])[0], dt, started)

    def _append_once(self, record: Record, idem: bytes | None) -> Position:
        """One attempt at ``append`` (``idem``: the key the record is sent with, when not its own)."""
        lane = getattr(self._local, "lane", None)  # (no try: its AttributeError would chain onto errors raised)
        if lane is None or _monotonic() >= lane.until:
            return self._append_general(record, idem)
        rid = lane.new_id()
        header = _pack_header(APPEND_PREFIX, rid, APPEND_COUNT_TAG, 1)
        msg = encode_record(record, header, idem)
        if len(msg) >= ZERO_COPY_BYTES:
            return one_position(self._request(lane, rid, msg))
        sock = lane.sock
        try:
            send_frame(sock, msg, NOBLOCK)
        except zmq.ZMQError as exc:
            raise self._failed(lane, exc, "sending a request") from None
        try:
            data = sock.recv()
        except zmq.Again:  # a receive slice passed: wait on
            return one_position(self._await_reply(lane, rid, None, RECV_SLICE_MS / 1e3))
        except zmq.ZMQError as exc:
            raise self._failed(lane, exc, "receiving a reply") from None
        if len(data) == RUN_REPLY_SIZE:
            head, r, mid, seg, t3, off, t4, count = _unpack_run(data)
            if r == rid and count == 1 and (head, mid, t3, t4) == RUN_REPLY_TAGS:
                return _tuple_new(Position, (seg, off))  # Position(seg, off) without NamedTuple's __new__
        return one_position(self._await_reply(lane, rid, data))

    def _append_general(self, record: Record, idem: bytes | None) -> Position:
        """append's general path: connects as needed, queues behind outstanding requests, re-arms the lane."""
        tc = self._thread_conn()
        if not tc.session.idle:
            slot = _Slot()
            tc.session.queue_append((encode_record(record, b"", idem),), slot)
            self._wait(tc, (slot,))
            if slot.error is not None:
                raise slot.error
            pos: Position = slot.value[0]
            return pos
        rid = tc.new_id()
        header = P.encode_append(rid, 1)
        msg = encode_record(record, header, idem)
        pos = one_position(self._request(tc, rid, msg))
        if tc.session.idle and getattr(self._local, "tc", None) is tc:
            tc.until = tc.conn.next_check
            self._local.lane = tc
            if self._closed:  # close() ran meanwhile (it sets _closed, then disarms): stay disarmed
                tc.until = 0.0
        return pos

    def _request(self, tc: _ThreadConn, rid: int, msg: bytes | None) -> Any:
        """Send the compact APPEND ``msg`` (None: it was sent) and wait for its reply; the reply's runs.

        For when nothing else is outstanding on this thread: the same protocol
        and guarantees as the general path (Session), minus its bookkeeping and
        polling. Raises the writer's error for the request.
        """
        if msg is not None:
            if len(msg) - P.APPEND_HEADER_SIZE > P.MAX_PAYLOAD_BYTES:
                raise RecordTooLargeError(
                    f"a request of {len(msg) - P.APPEND_HEADER_SIZE} bytes of frames "
                    f"exceeds the {P.MAX_PAYLOAD_BYTES}-byte limit of the writer protocol"
                )
            try:
                send_frame(tc.sock, msg, NOBLOCK, len(msg) < ZERO_COPY_BYTES)
            except zmq.ZMQError as exc:
                raise self._failed(tc, exc, "sending a request") from None
        return self._await_reply(tc, rid, None)

    def _failed(self, tc: _ThreadConn, exc: zmq.ZMQError, what: str) -> WalError:
        """The WalError for a ZeroMQ failure on ``tc`` while doing ``what``, after resetting the connection."""
        err = zmq_error(exc, what, tc.conn.endpoint)
        self._reset(tc, err)
        return err

    def _await_reply(self, tc: _ThreadConn, rid: int, data: bytes | None, waited: float = 0.0) -> Any:
        """Wait for the reply to request ``rid`` (``data``: a reply already received); the reply's runs.

        ``waited``: seconds already spent waiting (they count against the timeout).

        The runs are returned as decoded (unchecked: ``positions_of`` checks
        them). Stale replies (from before a reset) are skipped (``Session.direct_reply``).
        """
        session, conn = tc.session, tc.conn
        sock = conn.sock
        err: WalError
        deadline = 0.0  # set at the first receive slice that times out: no clock read per append
        while True:
            if data is None:
                try:
                    data = sock.recv()  # blocks for at most RECV_SLICE_MS
                except zmq.Again:
                    now = time.monotonic()
                    if not deadline:
                        deadline = now + self.timeout - RECV_SLICE_MS / 1e3 - waited
                    if self._closed:  # another thread closed the client
                        err = WalClosedError(
                            "the client was closed while waiting for a reply (the outcome of the request is unknown)"
                        )
                    elif conn.check_lost():
                        err = self._lost_error(tc)
                    elif now >= deadline:
                        err = WriterUnavailableError(
                            f"no reply from the writer at {conn.endpoint} within "
                            f"{self.timeout:g} s (is it running? the outcome of the "
                            f"append is unknown)"
                        )
                    else:
                        continue
                    self._reset(tc, err)
                    raise err from None
                except zmq.ZMQError as exc:
                    raise self._failed(tc, exc, "receiving a reply") from None
            reply = session.direct_reply(rid, data)  # raises ProtocolError for a malformed one
            if reply is not None:
                if not reply.ok:
                    raise reply.result
                return reply.result
            data = None  # a stale reply, from before a reset

    def append_ex(self, record: Record) -> AppendResult:
        """``append``, also saying whether the record's key was already in the log (then nothing was
        written and ``position`` is the original's)."""
        return self.append_batch_ex((record,))[0]

    def append_batch_ex(self, records: Iterable[Record]) -> list[AppendResult]:
        """``append_batch``, with an ``AppendResult`` per record: a keyed record already in the log (or
        earlier in this batch) is a duplicate, not written, with the original's position.

        With ``delivery_timeout`` every record carries a key (an automatic one
        if it has none) and the whole batch is sent again while its outcome is
        unknown: the records already written come back as duplicates.
        """
        dt = self.delivery_timeout
        if dt is None:
            return append_results(self._batch_once(list(map(encode_record, records))))
        frames = identity_frames(records)
        return append_results(deliver(lambda: self._batch_once(frames), dt))

    def _batch_once(self, frames: list[bytes]) -> list[Position]:
        """One attempt at appending these frames: their positions (``KeyedPositions`` when some were
        duplicates), or the error."""
        if not frames:
            if self._closed:
                raise WalClosedError("the client is closed")
            return []
        tc = self._thread_conn()
        if tc.session.idle and sum(map(len, frames)) <= MAX_REQUEST_BYTES:
            return self._batch_direct(tc, frames)
        batch = tc.session.queue_batch(frames, _Slot)
        self._wait(tc, batch.waiters)
        return batch_keyed_positions(batch.counts, [Outcome(s.value, s.error) for s in batch.waiters])

    def append_batch(self, records: Iterable[Record]) -> list[Position]:
        """Append records in order (one request per 16 MiB, pipelined); their Positions once acknowledged.

        A batch of up to 16 MiB of frames is one request: acknowledged (per the
        writer's fsync policy) or refused, whole; it is also written whole when
        it fits in one segment (a larger one is split at a roll, and a failure
        part way can leave a prefix; so can a crash before the ack). A larger batch is
        split into several requests, which are NOT one unit: if one fails,
        those before it were already written (and later ones may be). The
        error raised then (the class of the failing request's error) says so
        and how many records -- the first k of the batch -- were acknowledged
        before the failing request. A batch with a frame too large for any
        request is refused before anything of it is sent.
        With ``delivery_timeout``: ``append_batch_ex`` (retried, every record keyed).
        """
        if self.delivery_timeout is not None:
            frames = identity_frames(records)
            return deliver(lambda: self._batch_once(frames), self.delivery_timeout)
        frames = list(map(encode_record, records))
        if not frames:
            if self._closed:
                raise WalClosedError("the client is closed")
            return []
        tc = self._thread_conn()
        if tc.session.idle and sum(map(len, frames)) <= MAX_REQUEST_BYTES:  # the common case: one request
            return self._batch_direct(tc, frames)  # size <= MAX_REQUEST_BYTES < P.MAX_PAYLOAD_BYTES
        batch = tc.session.queue_batch(frames, _Slot)
        self._wait(tc, batch.waiters)
        return batch_positions(batch.counts, [Outcome(s.value, s.error) for s in batch.waiters])

    def _batch_direct(self, tc: _ThreadConn, frames: list[bytes]) -> list[Position]:
        """append_batch's hot path: one request, nothing else outstanding on this thread."""
        rid = tc.new_id()
        runs = self._request(tc, rid, b"".join([P.encode_append(rid, len(frames)), *frames]))
        return positions_of(runs, list(map(len, frames)))

    def submit(self, record: Record) -> PendingAppend:
        """Queue an append without waiting (pipelining); ``.result()`` gives its Position.

        The append waits in this thread's queue and goes out, with everything
        queued beside it as one request, at the next moment this thread drives
        its connection: a ``result()`` or ``done()`` on any pending append, any
        other call of this client, a later ``submit`` that finds a reply
        waiting (the in-flight window freed), or once 1 MiB is queued. Without
        an event loop the caller's own calls are the moments to send (the
        asyncio client flushes once per loop turn), and coalescing appends
        submitted back to back is what lifts a pipelined producer past one
        record per message (Kafka's producer batches the same way). So collect
        (or poll ``done()``) what you submit: an append never collected is
        sent only by this thread's next call. Results arrive in order;
        collect them in the same thread.
        """
        started = time.monotonic()
        frame = encode_record(record if self.delivery_timeout is None else with_identity(record))
        tc = self._thread_conn_retrying(started)
        slot = _Slot()
        session = tc.session
        session.queue_append((frame,), slot)
        if session.queued_bytes >= session.coalesce_bytes or (session.in_flight and self._receive(tc)):
            try:
                self._pump(tc)
            except WriterUnavailableError:
                if self.delivery_timeout is None:
                    raise  # (else the append has that error too: its result() retries)
        return PendingAppend(self, slot, tc, frame, started)

    def _thread_conn_retrying(self, started: float) -> _ThreadConn:
        """``_thread_conn``; with ``delivery_timeout``, waiting (backing off) for a writer to connect to."""
        dt = self.delivery_timeout
        if dt is None:
            return self._thread_conn()
        return deliver(self._thread_conn, dt, started)

    def sync(self) -> None:
        """fsync everything the writer has written so far, whatever its policy.

        Appends this thread queued or sent before (``submit``) are sent and
        acknowledged first, so they are covered too (their errors, if any, go
        to their own ``result()``).
        """
        tc = self._thread_conn()
        if not tc.session.idle:
            waiters = tc.session.waiters()
            if waiters:
                self._wait(tc, waiters)  # SYNC must not overtake this thread's appends
                if getattr(self._local, "tc", None) is not tc:  # that wait lost the connection: say so
                    raise next(
                        (w.error for w in waiters if w.error is not None),  # (one timeout, not two)
                        WriterUnavailableError(f"lost the connection to the writer at {tc.conn.endpoint}"),
                    )
        self._control(P.Op.SYNC)

    def current_position(self) -> Position:
        """Where the writer will put the next record (<= the Position the next append returns)."""
        value: Position = self._control(P.Op.POSITION)  # its shape checked by the session
        return value

    def delete_segments_before(self, position: Position) -> int:
        """Delete whole segments before ``position``'s segment (never the active one); the count deleted.

        Segments a consumer's cursor still needs are kept: ``last_gc`` (a
        ``GcPlan``, as ``Wal.last_gc``) says which cursor held them back and which
        ``max_retained_bytes`` expired, and a WARNING in ``nori_wal.client`` says so.
        """
        pos = checked_position(position)
        plan = self._control(P.Op.GC, pos.segment_id, pos.offset)  # a GcPlan: its shape checked by the session
        return self.gc_done(pos, plan)

    def info(self) -> dict[str, Any]:
        """What the writer says about itself: pid, policy, positions, limits; records, writes, fsyncs so far."""
        value: dict[str, Any] = self._control(P.Op.INFO)  # its shape checked by the session
        return value

    def close(self) -> None:
        """Close the client: every later call raises WalClosedError. Idempotent, and never blocks on
        other threads.

        Appends this thread submitted and never collected are sent and made
        durable first (bounded by ``timeout``), so closing does not drop them.
        This thread's connection (and those of threads that have ended) is
        closed at once (linger 0). Another thread's connection is closed by
        that thread (ZeroMQ sockets are not thread-safe): its call in progress
        raises WalClosedError within a receive slice (0.25 s; the outcome of
        its request is unknown), or its next call does. The ZeroMQ context is
        terminated with the last connection: a live thread that never calls the
        client again keeps its socket, and the context, until the process ends.
        """
        tc: _ThreadConn | None = getattr(self._local, "tc", None)
        if not self._closed and tc is not None and tc.pid == current_pid() and not tc.session.idle:
            try:
                self.sync()  # sends this thread's queue, waits for its acks, then fsyncs
            except WalError:
                pass  # the pending appends get their error below
        error = WalClosedError("the client was closed")
        with self._lock:
            self._closed = True
            self._disarm_all()
            if self._pid != current_pid():  # forked, no call since: all of it is the parent's
                mine, self._conns = self._conns, []
            else:
                mine = [c for c in self._conns if c is tc or not c.thread.is_alive()]
                self._conns = [c for c in self._conns if all(c is not m for m in mine)]
            for c in mine:
                for done in c.session.fail_all(error):
                    _resolve(done.waiter, None, done.error)
                c.conn.close()
            ctx = self._release_context()
        if tc is not None:
            self._local.tc = None
        if ctx is not None:
            close_context(ctx, self._pid)

    def _release_context(self) -> Any:
        """Under the lock, once closed: the context to terminate if no thread's connection is left."""
        if not self._closed:
            return None
        for dead in [c for c in self._conns if not c.thread.is_alive()]:
            self._drop(dead)
        if self._conns:
            return None  # the last thread to close its connection terminates it
        ctx, self._ctx = self._ctx, None
        return ctx

    def _close_own(self) -> None:
        """After close (by any thread): close this thread's connection; the context if it was the last."""
        tc: _ThreadConn | None = getattr(self._local, "tc", None)
        if tc is not None:
            self._reset(tc, WalClosedError("the client was closed"))
            return
        with self._lock:
            ctx = self._release_context()
        if ctx is not None:
            close_context(ctx, self._pid)

    def __enter__(self) -> WalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _thread_conn(self) -> _ThreadConn:
        """This thread's connection, made or remade as needed; disarms its append lane (see append)."""
        lane = getattr(self._local, "lane", None)
        if lane is not None:
            lane.until = 0.0
        if self._closed:
            self._close_own()
            raise WalClosedError("the client is closed")
        tc: _ThreadConn | None = getattr(self._local, "tc", None)
        if tc is not None and tc.pid == current_pid():
            if not tc.conn.lost_since_last_call(time.monotonic()):
                return tc
            # The writer went away since the last call (it may be back already): whatever was
            # still outstanding has an unknown outcome; a fresh connection serves this call.
            self._reset(tc, self._lost_error(tc))
            tc = None
        return self._new_thread_conn(tc)

    @staticmethod
    def _lost_error(tc: _ThreadConn) -> WriterUnavailableError:
        return WriterUnavailableError(
            f"lost the connection to the writer at {tc.conn.endpoint} (did it exit?); "
            f"the outcome of the request(s) in flight is unknown"
        )

    def _new_thread_conn(self, old: _ThreadConn | None) -> _ThreadConn:
        """A fresh connection for this thread (after first use, a fork, a timeout or a lost writer)."""
        with self._lock:
            if self._check_process():  # forked: the parent's connections are forgotten, not dropped
                old = None
            if old is not None:
                self._drop(old)
            for dead in [tc for tc in self._conns if not tc.thread.is_alive()]:
                self._drop(dead)  # threads that ended leave their sockets to us
            ctx, endpoint = self._connection_target()
            tc = _ThreadConn(Connection(ctx, endpoint, self.timeout), self.max_in_flight)
            self._conns.append(tc)
        self._local.tc = tc
        return tc

    def _drop(self, tc: _ThreadConn) -> None:
        if tc in self._conns:
            self._conns.remove(tc)
        tc.conn.close()

    def _reset(self, tc: _ThreadConn, error: WalError) -> None:
        """Fail everything outstanding on ``tc`` with ``error`` and drop the connection (Rule 2 of transport)."""
        tc.until = 0.0
        for c in tc.session.fail_all(error):
            _resolve(c.waiter, None, c.error)
        with self._lock:
            self._drop(tc)
            ctx = self._release_context()  # closed meanwhile, and this was the last connection
        if getattr(self._local, "tc", None) is tc:
            self._local.tc = None
        if ctx is not None:
            close_context(ctx, self._pid)

    def _control(self, op: P.Op, *args: int) -> Any:
        dt = self.delivery_timeout
        if dt is None:
            return self._control_once(op, *args)
        return deliver(lambda: self._control_once(op, *args), dt)

    def _control_once(self, op: P.Op, *args: int) -> Any:
        tc = self._thread_conn()
        slot = _Slot()
        try:
            tc.conn.send(tc.session.control(op, slot, time.monotonic(), *args))
        except WalError as exc:
            self._reset(tc, exc)
            raise
        self._wait(tc, (slot,))
        if slot.error is not None:
            raise slot.error
        return slot.value

    def _pump(self, tc: _ThreadConn) -> None:
        """Send whatever the session lets out now, and take in replies already here (no waiting)."""
        self._send_ready(tc, time.monotonic())
        self._receive(tc)

    def _send_ready(self, tc: _ThreadConn, now: float) -> None:
        """Send every request the session lets out now; a failed send resets the connection."""
        session, conn = tc.session, tc.conn
        try:
            while (frames := session.take(now)) is not None:
                conn.send(frames)
        except WalError as exc:
            self._reset(tc, exc)
            raise

    def _receive(self, tc: _ThreadConn) -> bool:
        """Handle every reply already received; True if there was any."""
        sock, session = tc.conn.sock, tc.session
        got = False
        while True:
            try:
                if not sock.getsockopt(EVENTS) & POLLIN:
                    return got
                data = sock.recv(NOBLOCK)
            except zmq.ZMQError as exc:
                err = zmq_error(exc, "receiving a reply", tc.conn.endpoint)
                self._reset(tc, err)
                raise err from exc
            got = True
            try:
                done = session.complete(data)
            except WalError as exc:  # an unreadable reply: this connection is confused
                self._reset(tc, exc)
                raise
            for c in done:
                _resolve(c.waiter, c.value, c.error)

    def _wait(self, tc: _ThreadConn, slots: Sequence[_Slot]) -> None:
        """Drive the connection until every slot is resolved; WriterUnavailableError after ``timeout``
        seconds without a reply, or at once when the connection to the writer is lost."""
        session, conn = tc.session, tc.conn
        items = tc.poll_items
        zpoll = zmq.zmq_poll
        last = slots[-1]
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:  # another thread closed the client
                self._reset(
                    tc,
                    WalClosedError(
                        "the client was closed while waiting for a reply (the outcome "
                        "of the request(s) in flight is unknown)"
                    ),
                )
                return
            now = time.monotonic()
            self._send_ready(tc, now)
            if last.done and all(s.done for s in slots):
                return
            left = deadline - now
            if left <= 0:
                err = WriterUnavailableError(
                    f"no reply from the writer at {conn.endpoint} within {timeout:g} s "
                    f"(is it running? the outcome of the {session.in_flight} request(s) in flight is unknown)"
                )
                self._reset(tc, err)
                return
            if not zpoll(items, max(1, min(RECV_SLICE_MS, int(left * 1e3 + 0.999)))):  # slices: see _closed
                continue
            if self._receive(tc):
                deadline = time.monotonic() + timeout
            elif conn.check_lost():
                self._receive(tc)  # replies that arrived before the connection dropped still count
                if not (last.done and all(s.done for s in slots)):
                    self._reset(tc, self._lost_error(tc))
                    return


def _resolve(slot: _Slot, value: Any, error: WalError | None) -> None:
    slot.value, slot.error, slot.done = value, error, True
