"""The shipper: a named cursor in, pipelined JetStream publishes out, the cursor committed behind the acks.

One asyncio loop owns the connection. The cursor is read in a thread
(``Feed``); each record is published with ``Nats-Msg-Id`` (the log's id and
the position) and ``Nats-Expected-Last-Sequence`` (what ``InFlight`` says the
stream's last sequence must be), up to ``max_in_flight`` at once. Acks move
``InFlight.committable``; ``CommitClock`` decides when the cursor is committed
there (in a worker thread: a commit fsyncs).

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
from typing import Any, Callable, Optional, Sequence

from ..position import Position
from .errors import ClusterUnreachableError, NatsNotInstalledError, ShipError
from .feed import Feed, Item
from .identity import ensure_identity
from .inflight import CommitClock, InFlight
from .mapping import EXPECTED_LAST_SEQ
from .stream import check_stream, connect, redact, stream_state

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
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop already closed
                pass

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
        feed = Feed(cursor, log_id)
        self._state = _State(
            InFlight[Item](self.options.max_in_flight),
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
                await self._session(js, feed, log_id, backoff)
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
                if nc is not None:
                    await _close(nc)

    async def _session(self, js: Any, feed: Feed, log_id: str, backoff: "_Backoff") -> None:
        st = self._state
        await self._drain()
        state = await stream_state(js, self.stream, self.subject, log_id)
        st.redo.extendleft(reversed([item for _, item in st.window.reset(state.last_seq + 1)]))
        st.skip_through = state.shipped_through
        st.failure = None
        st.generation += 1
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
            batch = list(st.redo) if st.redo else await self._take(feed)
            st.redo.clear()
            if batch is None:
                raise ShipError(f"the cursor ended: {feed.error!r}") from feed.error
            for item in batch:
                await self._publish(js, item)
                if st.failure is not None:
                    st.redo.extend(batch[batch.index(item) + 1 :])
                    break
            if batch:
                backoff.reset()
            await self._commit()
            now = time.monotonic()
            if now - last_progress >= self.options.progress_interval:
                last_progress = now
                await self._progress()

    async def _take(self, feed: Feed) -> Optional[list[Item]]:
        room = max(1, self._state.window.room)
        return await asyncio.to_thread(feed.take, min(room, 512), 0.05)

    async def _publish(self, js: Any, item: Item) -> None:
        st = self._state
        if st.skip_through is not None and item.position <= st.skip_through:
            st.window.skip(item.position)
            st.clock.advanced(1, time.monotonic())
            self.stats.acked += 1
            return
        while not st.window.room and st.failure is None:
            st.room.clear()
            await st.room.wait()
        if st.failure is not None:
            st.redo.appendleft(item)
            return
        seq = st.window.send(item.position, item)
        headers = dict(item.message.headers)
        if seq > 1:
            headers[EXPECTED_LAST_SEQ] = str(seq - 1)
        task = asyncio.ensure_future(js.publish(self.subject, item.message.payload, headers=headers))
        st.tasks.add(task)
        gen, size = st.generation, len(item.message.payload)
        task.add_done_callback(lambda t: self._done(t, gen, seq, size))
        self.stats.published += 1

    def _done(self, task: "asyncio.Future[Any]", gen: int, seq: int, size: int) -> None:
        st = self._state
        st.tasks.discard(task)
        st.room.set()
        if task.cancelled() or gen != st.generation:  # a publish of an earlier session: drained, then forgotten
            return
        exc = task.exception()
        if exc is not None:
            if st.failure is None:
                st.failure = exc
            return
        ack = task.result()
        moved = st.window.ack(seq)
        if moved:
            st.clock.advanced(moved, time.monotonic())
        self.stats.acked += 1
        self.stats.bytes += size
        self.stats.duplicates += bool(getattr(ack, "duplicate", False))
        self.stats.in_flight = st.window.in_flight

    async def _drain(self) -> None:
        """Wait for every publish in flight to be acked or to fail (each is bounded by the ack timeout)."""
        tasks = list(self._state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=2 * self.options.ack_timeout)
            for t in tasks:
                t.cancel()

    async def _finish(self) -> None:
        """On stop: let the publishes in flight be acked (bounded), then commit as far as they reach."""
        tasks = list(self._state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.options.ack_timeout)
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
    window: InFlight[Item]
    clock: CommitClock
    redo: deque[Item] = field(default_factory=deque)
    skip_through: Optional[Position] = None
    failure: Optional[BaseException] = None
    generation: int = 0
    committing: Optional["asyncio.Future[None]"] = None
    tasks: set["asyncio.Future[Any]"] = field(default_factory=set)
    room: asyncio.Event = field(default_factory=asyncio.Event)


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
