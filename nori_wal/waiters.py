"""How a follower waits for new durable records: poll the durable mark, or be woken by the writer.

A follower (a ``Consumer``, ``nori-wal dump --follow``, a following reader)
reads up to the end it can see, then asks its ``Waiter`` to wait. The file is
the truth (``DIR/DURABLE``, the durable mark); a waiter only says "look now".

- ``PollWaiter`` reads the mark every 2 ms (a 32-byte read of a shared page).
- ``SubWaiter`` listens on the writer's wake-up PUB socket (its endpoint is
  ``notify`` in ``DIR/WRITER``; ``writer_proc.notify``), which publishes after
  every fsync that moves the durable end, and re-reads the mark when a message
  arrives and every ``SUB_SLICE`` anyway (a dropped message, a writer that
  restarts, costs latency, never a record). With no live writer recorded it
  polls the mark like ``PollWaiter`` (an embedded ``Wal`` in another process
  moves the mark without a socket), and looks for a writer again every second.

Rules:
1. A waiter remembers the mark it last returned on, so a move between two
   waits makes the next wait return at once: no wake-up is lost.
2. ``wake`` (from another thread) makes a wait in progress return now and
   every later wait return at once; ``close`` from another thread waits for the
   wait in progress to let go of the socket before closing it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from .durable_mark import MarkReader
from .endpoint_file import live_record
from .fs import OS, FileLayer
from .position import Position

POLL_INTERVAL = 0.002  # seconds between two looks at the durable mark without a writer's socket
SUB_SLICE = 0.05  # seconds: with the socket, the mark is re-read at least this often anyway
LOOKUP_INTERVAL = 1.0  # seconds between two looks at DIR/WRITER (a writer starting, stopping, moving)

if TYPE_CHECKING:
    import zmq


class Waiter(Protocol):
    """How a follower waits for new durable records (see the module docstring)."""

    def wait(self, timeout: float) -> None:
        """Return when new durable records may exist, when woken, or after ``timeout`` seconds."""

    def wake(self) -> None:
        """Make a wait in progress (in another thread) return now; later waits return at once."""

    def close(self) -> None: ...


class PollWaiter:
    """Waits until the durable mark (``DIR/DURABLE``) moves, looking every ``interval`` seconds.

    Without a writer the mark does not move, and a durable-only reader has
    nothing new to read.
    """

    def __init__(self, layer: FileLayer, directory: str, interval: float = POLL_INTERVAL):
        self._mark = MarkReader(layer, directory)
        self._interval = interval
        self._seen: Position | None = None
        self._woken = threading.Event()
        self._io = threading.Lock()  # close() from another thread never closes the mark mid-read

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with self._io:
                if self._woken.is_set():
                    return
                mark = self._mark.read()
            if mark != self._seen:
                self._seen = mark
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._woken.wait(min(self._interval, left))

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        self._woken.set()
        with self._io:
            self._mark.close()


class SubWaiter:
    """Waits for the writer's wake-up message, re-reading the durable mark; polls it when no writer runs.

    ``wakeups`` counts the messages received (a figure for tests and benchmarks).
    """

    def __init__(
        self,
        layer: FileLayer,
        directory: str,
        *,
        interval: float = POLL_INTERVAL,
        slice_: float = SUB_SLICE,
        ctx: zmq.Context[Any] | None = None,
    ):
        import zmq  # here, not at the top: importing nori_wal must not load ZeroMQ

        self._zmq = zmq
        self._dir = directory
        self._mark = MarkReader(layer, directory)
        self._interval, self._slice = interval, slice_
        self._ctx = ctx
        self._seen: Position | None = None
        self._woken = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sub: zmq.Socket[Any] | None = None
        self.endpoint: str | None = None  # the writer's wake-up socket we listen on (None: polling)
        self._next_lookup = 0.0
        self._io = threading.Lock()  # the socket and the mark, held for a wait's whole slice (Rule 2)
        self._closed = False
        self.wakeups = 0
        self._next_lookup = time.monotonic() + LOOKUP_INTERVAL
        self._follow_writer()  # now: the subscription joins while the follower reads what is there

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._io:
            while not self._woken:
                now = time.monotonic()
                if now >= self._next_lookup:
                    self._next_lookup = now + LOOKUP_INTERVAL
                    self._follow_writer()
                mark = self._mark.read()
                if mark != self._seen:  # Rule 1
                    self._seen = mark
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._block(min(left, self._slice if self._sub is not None else self._interval))

    def _follow_writer(self) -> None:
        """Listen on the live writer's wake-up socket (DIR/WRITER's ``notify``), or on none."""
        rec = live_record(self._dir)
        endpoint = rec.notify if rec is not None else None
        if endpoint == self.endpoint:
            return
        if self._sub is not None:
            self._sub.close(0)
            self._sub = None
        self.endpoint = endpoint
        if endpoint is None:
            return
        z = self._zmq
        ctx = self._ctx or z.Context.instance()
        sub: zmq.Socket[Any] = ctx.socket(z.SUB)
        try:
            sub.setsockopt(z.LINGER, 0)
            sub.setsockopt(z.CONFLATE, 1)  # only "it moved" matters: keep the last message
            sub.setsockopt(z.SUBSCRIBE, b"")
            sub.connect(endpoint)
        except z.ZMQError:  # a record we cannot use: poll instead
            sub.close(0)
            self.endpoint = None
            return
        self._sub = sub

    def _block(self, seconds: float) -> None:
        """Sleep up to ``seconds``, ending early on a wake-up message or ``wake``."""
        z = self._zmq
        items: list[tuple[Any, int]] = [(self._wake_r, z.POLLIN)]
        if self._sub is not None:
            items.append((self._sub, z.POLLIN))
        ready = z.zmq_poll(items, max(1, int(seconds * 1e3 + 0.5)))
        if self._sub is not None and any(s is self._sub for s, _ in ready):
            while True:
                try:
                    self._sub.recv(z.NOBLOCK)
                except z.ZMQError:
                    break
                self.wakeups += 1

    def wake(self) -> None:
        self._woken = True
        if self._closed:
            return
        try:
            os.write(self._wake_w, b"w")
        except OSError:  # full (already woken) or closed
            pass

    def close(self) -> None:
        self.wake()
        with self._io:
            if self._closed:
                return
            self._closed = True
            if self._sub is not None:
                self._sub.close(0)
                self._sub = None
            self._mark.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


def follow_waiter(directory: str, layer: FileLayer = OS) -> Waiter:
    """The waiter followers use by default: the writer's wake-ups on real files, polling on a test layer."""
    if layer is OS:
        return SubWaiter(layer, directory)
    return PollWaiter(layer, directory)


__all__ = ["LOOKUP_INTERVAL", "POLL_INTERVAL", "SUB_SLICE", "PollWaiter", "SubWaiter", "Waiter", "follow_waiter"]
