"""The writer loop's two helper threads, and how they wake it: the flush thread and the watcher.

The loop waits on its ROUTER socket alone. Its helper threads wake it with a
message from an inproc DEALER whose routing id starts with ``!`` (ids ZeroMQ
generates for peers start with a 0 byte):

- ``FlushThread`` (opt-in ``overlap``) runs ``SegmentLog.sync`` off the loop's
  thread while the loop receives, validates and writes the next group
  (``os.fdatasync`` releases the GIL); it says "done" with ``FLUSH_ID``.
- ``Watcher`` turns a signal's wake-up byte and the lifeline's EOF into a
  message with ``WAKE_ID``. Signal handlers only set a flag (gunicorn: "just
  queue the signal"); ``signal.set_wakeup_fd`` writes a byte that wakes the
  watcher, which wakes the loop. Blocked in ``select``, it costs nothing.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any, Callable, NamedTuple

import zmq

from ..errors import WalError, WalIOError
from ..position import Position
from ..segment_log import SegmentLog

FLUSH_ID = b"!flush"  # routing ids of the writer's own threads (peer-generated ids start with a 0 byte)
WAKE_ID = b"!wake"
INTERNAL_IDS = frozenset((FLUSH_ID, WAKE_ID))  # a peer may choose an id starting with "!": it is served
_NOBLOCK = int(zmq.NOBLOCK)


class FsyncResult(NamedTuple):
    """How an fsync ended: everything before ``durable`` is durable, or ``error`` says why not."""

    durable: Position | None
    error: WalError | None


def internal_socket(ctx: zmq.Context[Any], routing_id: bytes, endpoint: str) -> zmq.Socket[Any]:
    """A DEALER for one of the writer's own threads, connected to the loop's ROUTER (inproc)."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


class FlushThread:
    """Runs ``SegmentLog.sync`` off the loop's thread; says "done" with a message into the loop's ROUTER.

    The loop then waits on one socket only, whatever woke it: a producer, a
    finished fsync or (through ``Watcher``) a signal or the lifeline.
    """

    def __init__(self, seglog: SegmentLog, ctx: zmq.Context[Any], wake_endpoint: str):
        self._log = seglog
        self._cond = threading.Condition()
        self._jobs = 0  # fsyncs handed over and not yet begun
        self._closing = False
        self.started = 0  # fsyncs handed to the thread ...
        self.finished = 0  # ... and finished (the result below belongs to the last one)
        self._result = FsyncResult(None, None)
        self._sock = internal_socket(ctx, FLUSH_ID, wake_endpoint)
        self._thread = threading.Thread(target=self._run, name="nori-wal-flush", daemon=True)
        self._thread.start()

    def start(self) -> None:
        with self._cond:
            self.started += 1
            self._jobs += 1
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._jobs and not self._closing:
                    cond.wait()
                if not self._jobs:
                    return
                self._jobs -= 1
            try:
                res = FsyncResult(self._log.sync(), None)
            except WalError as exc:
                res = FsyncResult(None, exc)
            except BaseException as exc:  # noqa: BLE001  never leave the loop waiting for an answer
                res = FsyncResult(None, WalIOError(f"fsync thread failed: {exc!r}"))
            with cond:
                self._result = res
                self.finished += 1
                cond.notify_all()
                try:
                    self._sock.send(b"f", _NOBLOCK)  # the socket is only used under the lock
                except zmq.ZMQError:
                    pass

    def take(self) -> FsyncResult | None:
        """The result of the fsync handed over last, or None while it still runs."""
        with self._cond:
            return self._result if self.finished == self.started else None

    def wait(self) -> FsyncResult:
        """Block until the fsync handed over last has finished; its result."""
        with self._cond:
            while self.finished != self.started:
                self._cond.wait()
            return self._result

    def close(self) -> bool:
        """Stop the thread; False if it did not end within 10 s."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            self._sock.close(0)
        self._thread.join(10.0)
        return not self._thread.is_alive()


class Watcher:
    """Turns a signal's wake-up byte and the lifeline's EOF into a message for the loop's ROUTER."""

    def __init__(
        self,
        on_lifeline_closed: Callable[[], None],
        sock: zmq.Socket[Any],
        wake_fd: int | None,
        lifeline_fd: int | None,
    ):
        self._on_lifeline_closed = on_lifeline_closed
        self._fds = [fd for fd in (wake_fd, lifeline_fd) if fd is not None]
        self._lifeline = lifeline_fd
        self._stop_r, self._stop_w = os.pipe()
        self._sock = sock  # connected by the server before its public endpoint existed
        self._thread = threading.Thread(target=self._run, name="nori-wal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fds = self._fds + [self._stop_r]
        while True:
            ready, _, _ = select.select(fds, [], [])
            if self._stop_r in ready:
                break
            for fd in ready:
                if not _drain_fd(fd) and fd == self._lifeline:
                    fds.remove(fd)
                    self._on_lifeline_closed()
            try:
                self._sock.send(b"w", _NOBLOCK)
            except zmq.ZMQError:
                pass
        self._sock.close(0)

    def close(self) -> bool:
        """Stop the thread; False if it did not end within 10 s (its pipe is then left open)."""
        os.write(self._stop_w, b"x")
        self._thread.join(10.0)
        if self._thread.is_alive():
            return False
        os.close(self._stop_r)
        os.close(self._stop_w)
        return True


def _drain_fd(fd: int) -> bool:
    """Read what a wake-up fd holds; False at EOF."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True
    except OSError:
        return False


__all__ = ["FLUSH_ID", "INTERNAL_IDS", "WAKE_ID", "FlushThread", "FsyncResult", "Watcher", "internal_socket"]
