"""The shipper: a named cursor in, pipelined JetStream publishes out, the cursor committed behind the acks.

One asyncio loop owns the connection. The cursor is read in a thread
(``Feed``); each record is published with ``Nats-Msg-Id`` (the log's id and
the position) and ``Nats-Expected-Last-Sequence`` (what ``InFlight`` says the
stream's last sequence must be), up to ``max_in_flight`` at once. Acks move
``InFlight.committable``; ``CommitClock`` decides when the cursor is committed
there (in a worker thread: a commit fsyncs).

The publisher's Python time per message is the shipper's throughput (the
cluster's servers share the CPU), so a publish is one ``nc.publish`` whose
reply subject is the session's inbox plus the send's sequence number: one
subscription takes every answer (``parse_ack`` reads it, the subject says
which send it is), and one timer per session enforces the ack timeout on the
oldest send. No task, future or timer per message; records come from the
feed in batches.

Any failure (a timeout, a lost connection, a leader change, "wrong last
sequence") ends the session: the shipper waits for the publishes in flight,
reconnects with backoff, reads the stream's last message of this log and
re-sends, in order, what the stream does not hold. So the stream holds each
record once, in log order, whatever crashed (docs/SHIPPING.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, NamedTuple, Optional, Sequence

from ..position import Position
from .errors import ClusterUnreachableError, NatsNotInstalledError, ShipError
from .feed import Feed, Item
from .identity import ensure_identity
from .inflight import CommitClock, InFlight
from .mapping import EXPECTED_LAST_SEQ
from .stream import check_stream, connect, parse_ack, redact, stream_state

log = logging.getLogger("nori_wal.ship")


@dataclass
class ShipStats:
    """What the shipper did so far (read from any thread; updated by the shipper's loop)."""

    published: int = 0  # publishes sent, re-sends included
    acked: int = 0  # records the stream acknowledged (or already held)
    duplicates: int = 0  # acks JetStream marked as duplicates
    bytes: int = 0  # payload bytes acknowledged
    committed: Optional[Position] = None  # the cursor's last commit
    resyncs: int = 0  # sessions ended by a failure
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class ShipOptions:
    subject: Optional[str] = None  # default: the stream's name
    consumer: str = "shipper"
    create_replicas: Optional[int] = None  # create a missing stream with this many replicas
    max_in_flight: int = 256
    commit_every: int = 1000  # commit after this many acked records...
    commit_interval: float = 0.2  # ...or this many seconds after the first uncommitted ack
    ack_timeout: float = 5.0  # seconds to wait for one publish's ack
    give_up_after: Optional[float] = None  # seconds without a working cluster before ClusterUnreachableError
    progress_interval: float = 10.0  # seconds between progress log lines
    connect_options: dict[str, Any] = field(default_factory=dict)  # passed to nats.connect (user, password, ...)


class _SessionFailed(Exception):
    """A transient failure: reconnect and resync."""


class Shipper:
    """Ship ``directory`` to ``stream`` on the cluster at ``servers`` (see the module docstring)."""

    def __init__(
        self,
        directory: str,
        servers: Sequence[str],
        stream: str,
        options: Optional[ShipOptions] = None,
        on_progress: Optional[Callable[[ShipStats], None]] = None,
    ) -> None:
        try:
            import nats  # noqa: F401
        except ImportError:
            raise NatsNotInstalledError() from None
        self.directory = directory
        self.servers = list(servers)
        self.stream = stream
        self.options = options or ShipOptions()
        self.subject = self.options.subject or stream
        self.stats = ShipStats()
        self.on_progress = on_progress
        self._stop = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._cursor: Any = None
        self._last_report = (time.monotonic(), 0, 0)

    # -- public -------------------------------------------------------------------------

    def run(self) -> None:
        """Ship until ``stop()`` (or a permanent ShipError); the cursor is committed as far as acked on the way out."""
        asyncio.run(self._main())

    def stop(self) -> None:
        """Ask ``run`` to finish (thread-safe; also from a signal handler)."""
        self._stop.set()
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._interrupt)
            except RuntimeError:  # the loop already closed
                pass

    def _interrupt(self) -> None:
        if self._wake is not None:
            self._wake.set()
        state = getattr(self, "_state", None)
        if state is not None:
            state.room.set()

    def lag(self) -> Optional[tuple[int, int]]:
        """The cursor's lag (bytes, records) behind the durable end of the log, or None if unknown."""
        from ..consumer import list_consumers

        try:
            info = next((c for c in list_consumers(self.directory) if c.name == self.options.consumer), None)
        except Exception as exc:  # a progress line must never stop shipping
            log.debug("lag unknown: %r", exc)
            return None
        return None if info is None else (info.lag_bytes, info.lag_records)

    # -- the loop -----------------------------------------------------------------------

    async def _main(self) -> None:
        from ..consumer import open_consumer

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        log_id = await asyncio.to_thread(ensure_identity, self.directory)
        cursor = open_consumer(self.directory, self.options.consumer, start="earliest")
        self._cursor = cursor
        feed = Feed(cursor, log_id, self._loop)
        self._state = _State(
            InFlight[_Sent](self.options.max_in_flight),
            CommitClock(self.options.commit_every, self.options.commit_interval),
        )
        try:
            await self._sessions(feed, log_id)
        finally:
            await self._commit(force=True)
            cursor.close()
            feed.close()

    async def _sessions(self, feed: Feed, log_id: str) -> None:
        backoff = _Backoff()
        outage_since: Optional[float] = None
        checked = False
        while not self._stop.is_set():
            nc = None
            try:
                nc = await connect(self.servers, **self.options.connect_options)
                js = nc.jetstream(timeout=self.options.ack_timeout)
                if not checked:
                    await check_stream(
                        js, self.stream, self.subject, self.options.ack_timeout, self.options.create_replicas
                    )
                    checked = True
                outage_since = None
                await self._session(nc, js, feed, log_id, backoff)
            except ShipError:
                raise
            except Exception as exc:  # transient: the cluster, a leader change, a lost ack
                now = time.monotonic()
                outage_since = outage_since or now
                if self.options.give_up_after is not None and now - outage_since >= self.options.give_up_after:
                    where = ", ".join(map(redact, self.servers))
                    raise ClusterUnreachableError(
                        f"no working NATS cluster at {where} for {now - outage_since:.0f} s: {_why(exc)}"
                    ) from exc
                delay = backoff.next()
                log.warning("shipping paused (%s); retrying in %.1f s", _why(exc), delay)
                await self._sleep(delay)
            finally:
                self._state.generation += 1  # this connection's acks and timers are forgotten
                if nc is not None:
                    await _close(nc)

    async def _session(self, nc: Any, js: Any, feed: Feed, log_id: str, backoff: "_Backoff") -> None:
        st = self._state
        await self._drain()
        state = await stream_state(js, self.stream, self.subject, log_id)
        st.redo.extendleft(reversed([sent.item for _, sent in st.window.reset(state.last_seq + 1)]))
        st.skip_through = state.shipped_through
        st.failure = None
        self.stats.in_flight = st.window.in_flight
        pipe = st.pipe = _Pipe(nc, nc.new_inbox() + ".", st.generation)
        await nc.subscribe(pipe.inbox + "*", cb=self._ack_callback(pipe))
        self._watch(pipe)
        log.info(
            "shipping %s to stream %s subject %s from seq %d (stream holds this log through %s)",
            self.directory,
            self.stream,
            self.subject,
            state.last_seq,
            state.shipped_through,
        )
        last_progress = time.monotonic()
        while True:
            if self._stop.is_set():
                await self._finish()
                return
            if st.failure is not None:
                self.stats.resyncs += 1
                raise _SessionFailed(_why(st.failure)) from st.failure
            room = st.window.room
            if not room:
                st.room.clear()
                await st.room.wait()  # set by an ack, a failure, the ack timeout or stop
                continue
            batch = self._redo(room) if st.redo else await feed.take(min(room, 512), 0.05)
            if batch is None:
                raise ShipError(f"the cursor ended: {feed.error!r}") from feed.error
            if batch:
                await self._publish(pipe, batch)
                backoff.reset()
            await self._commit()
            now = time.monotonic()
            if now - last_progress >= self.options.progress_interval:
                last_progress = now
                await self._progress()

    def _redo(self, most: int) -> list[Item]:
        redo = self._state.redo
        return [redo.popleft() for _ in range(min(most, len(redo)))]

    async def _publish(self, pipe: "_Pipe", batch: list[Item]) -> None:
        """Publish ``batch`` in order (it fits in the window); what a failure leaves unsent goes to ``redo``."""
        st = self._state
        window, publish, subject, inbox = st.window, pipe.nc.publish, self.subject, pipe.inbox
        sends = 0
        for i, item in enumerate(batch):
            if st.skip_through is not None and item.position <= st.skip_through:
                window.skip(item.position)
                st.clock.advanced(1, time.monotonic())
                self.stats.acked += 1
                continue
            if st.failure is not None:
                st.redo.extendleft(reversed(batch[i:]))  # they precede what redo still holds
                break
            now = time.monotonic()
            seq = window.send(item.position, _Sent(item, now))
            sends += 1
            headers = item.message.headers  # the item's own dict: the guard is rewritten on every send
            if seq > 1:
                headers[EXPECTED_LAST_SEQ] = str(seq - 1)
            else:
                headers.pop(EXPECTED_LAST_SEQ, None)
            st.publishing = True
            try:
                await publish(subject, item.message.payload, reply=inbox + str(seq), headers=headers)
            except Exception as exc:  # a closed or reconnecting connection: resync
                self._fail(exc)
            finally:
                st.publishing = False
        if sends:
            pipe.sent += sends
            pipe.last_send = now
            self.stats.published += sends
            self.stats.in_flight = window.in_flight

    def _ack_callback(self, pipe: "_Pipe") -> Callable[[Any], Awaitable[None]]:
        """The inbox subscription's callback: one ack (or refusal) per message, its sequence in the subject."""
        skip = len(pipe.inbox)

        async def on_ack(msg: Any) -> None:
            self._acked(pipe, msg, skip)

        return on_ack

    def _acked(self, pipe: "_Pipe", msg: Any, skip: int) -> None:
        st = self._state
        if pipe.generation != st.generation:  # an earlier session's publish: drained, then forgotten
            return
        pipe.answered += 1
        try:
            seq = int(msg.subject[skip:])
            duplicate = parse_ack(msg.data, msg.headers)
        except Exception as exc:
            self._fail(exc)
            return
        sent = st.window.get(seq)
        moved = st.window.ack(seq)
        if moved:
            st.clock.advanced(moved, time.monotonic())
        st.room.set()
        if sent is not None:
            stats = self.stats
            stats.in_flight = st.window.in_flight
            stats.acked += 1
            stats.bytes += len(sent.item.message.payload)
            if duplicate:
                stats.duplicates += 1

    def _fail(self, exc: BaseException) -> None:
        st = self._state
        if st.failure is None:
            st.failure = exc
        st.room.set()

    def _watch(self, pipe: "_Pipe") -> None:
        """The ack timeout: every tick, fail the session when its oldest unacknowledged publish is too old.

        One timer per session instead of one per publish. A publish stuck in
        nats-py's buffer flush (a server that stopped reading) is ended by
        closing the connection.
        """
        st = self._state
        if pipe.generation != st.generation:
            return
        oldest = st.window.oldest()
        timeout = self.options.ack_timeout
        if oldest is not None and time.monotonic() - oldest.sent_at >= timeout and st.failure is None:
            self._fail(TimeoutError(f"no ack from JetStream within {timeout:g} s"))
            if st.publishing:
                pipe.closing = asyncio.ensure_future(_close(pipe.nc))
        assert self._loop is not None
        self._loop.call_later(min(0.1, timeout / 10), self._watch, pipe)

    async def _drain(self) -> None:
        """Let every publish of the last session be answered or time out before the stream is read again.

        Its connection is closed, so no answer comes any more; a publish still
        unanswered may be stored until its ack timeout, so while any is, wait
        out the last send's.
        """
        pipe = self._state.pipe
        if pipe is not None and pipe.answered < pipe.sent:
            await self._sleep(pipe.last_send + self.options.ack_timeout - time.monotonic())

    async def _finish(self) -> None:
        """On stop: let the publishes in flight be acked (bounded), then commit as far as they reach."""
        st = self._state
        deadline = time.monotonic() + self.options.ack_timeout
        while st.window.in_flight and st.failure is None and time.monotonic() < deadline:
            st.room.clear()
            try:
                await asyncio.wait_for(st.room.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        await self._commit(force=True)

    async def _commit(self, force: bool = False) -> None:
        """Commit the cursor at the committable position when the clock says so (``force``: now, and wait).

        A commit fsyncs, so it runs in a worker thread while publishing goes on;
        one at a time.
        """
        st = self._state
        if st.committing is not None:
            if not st.committing.done() and not force:
                return
            await st.committing  # raises what the commit raised
            st.committing = None
        target = st.window.committable
        if target is None or target == self.stats.committed or not (force or st.clock.due(time.monotonic())):
            return
        st.clock.committed()
        st.committing = asyncio.ensure_future(self._commit_to(target))
        if force:
            await st.committing
            st.committing = None

    async def _commit_to(self, target: Position) -> None:
        await asyncio.to_thread(self._cursor.commit, target)
        self.stats.committed = target

    async def _progress(self) -> None:
        s = self.stats
        now = time.monotonic()
        then, acked, nbytes = self._last_report
        span = max(1e-9, now - then)
        self._last_report = (now, s.acked, s.bytes)
        lag = await asyncio.to_thread(self.lag)
        log.info(
            "shipped %d records (%.0f records/s, %.2f MiB/s), committed through %s, lag %s, %d in flight, %d resyncs",
            s.acked,
            (s.acked - acked) / span,
            (s.bytes - nbytes) / span / 2**20,
            s.committed,
            "unknown" if lag is None else f"{lag[1]} records ({lag[0]} bytes)",
            s.in_flight,
            s.resyncs,
        )
        if self.on_progress is not None:
            self.on_progress(s)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass


@dataclass
class _State:
    window: InFlight["_Sent"]
    clock: CommitClock
    redo: deque[Item] = field(default_factory=deque)
    skip_through: Optional[Position] = None
    failure: Optional[BaseException] = None
    generation: int = 0  # of the session: acks and timers of an earlier one are ignored
    committing: Optional["asyncio.Future[None]"] = None
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set by acks, failures, stop
    publishing: bool = False  # inside nats-py's publish (the ack timeout may have to close the connection)
    pipe: Optional["_Pipe"] = None  # the current (or last) session's


class _Sent(NamedTuple):
    item: Item
    sent_at: float  # time.monotonic() of the send


@dataclass
class _Pipe:
    """One session's connection: publishes reply to ``inbox`` + their sequence number."""

    nc: Any
    inbox: str
    generation: int
    sent: int = 0  # publishes sent on this connection
    answered: int = 0  # answers received (acks and refusals)
    last_send: float = 0.0  # time.monotonic() of the last publish
    closing: Optional["asyncio.Future[None]"] = None  # the ack timeout closing a stuck connection


class _Backoff:
    """Exponential backoff with jitter: 0.25 s doubling to 10 s; never a busy loop."""

    def __init__(self, first: float = 0.25, cap: float = 10.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close(nc: Any) -> None:
    try:
        await asyncio.wait_for(nc.close(), 5)
    except Exception:  # closing a broken connection: nothing more to do
        pass


def ship(directory: str, servers: Sequence[str], stream: str, **options: Any) -> Shipper:
    """Build a Shipper (``ShipOptions`` fields as keywords); call ``.run()`` to ship, ``.stop()`` to end."""
    return Shipper(directory, servers, stream, ShipOptions(**options))
