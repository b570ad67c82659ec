"""The clients' ZeroMQ boundary: one DEALER per connection, and the one place zmq errors are mapped.

A Connection is a DEALER socket plus a monitor that reports disconnects, built
in the process (and, for the sync client, the thread) that uses it. Every
connection has ``linger=0``: closing never waits for a writer that is gone.

Rules:
1. ``zmq_error`` is the only place a ``zmq.ZMQError`` becomes a WalError
   (httpx maps its transport errors once, the same way): ``zmq.Again`` and
   refused or lost connections are WriterUnavailableError, a terminated
   context is WalClosedError; the zmq error is chained as ``__cause__``.
2. A connection that timed out, lost its writer or belongs to another process
   (after ``fork``) is never reused: the client builds a fresh one, which is
   how the next call reaches a restarted writer. A forked child never touches
   its parent's sockets or context (not fork-safe); it only drops its
   references to them, and keeps them from being garbage collected.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import zmq

from ..errors import WalClosedError, WalError, WriterUnavailableError

NOBLOCK = int(zmq.NOBLOCK)  # plain ints: pyzmq's IntFlag arithmetic costs microseconds
SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)
ZERO_COPY_BYTES = 64 * 1024  # payloads at least this large are sent without a copy
# pyzmq's C-level send: zmq.Socket.send's Python-level wrapper costs more per call than the C work
# of a small message (about 0.6 of 0.8 us here). Called as send_frame(sock, data, flags[, copy]).
send_frame: Callable[..., Any] = zmq.backend.Socket.send

RECV_SLICE_MS = 250  # a blocked receive wakes this often to look for a lost writer and the deadline
LOST_CHECK_S = 0.1  # between calls, the disconnect monitor is looked at no more often than this

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


# os.getpid() is a system call on every use (glibc no longer caches it), and libzmq
# already makes several per message: the clients compare against this instead.
os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """This process's pid, kept current across os.fork (and so multiprocessing's fork) without a syscall."""
    return _pid


# Sockets and contexts inherited through fork: never closed (that would touch the
# parent's ZeroMQ state), never collected (their __del__ would close them).
_ABANDONED: list[Any] = []


def zmq_error(exc: zmq.ZMQError, what: str, endpoint: str) -> WalError:
    """The WalError for a ZeroMQ failure while doing ``what`` with ``endpoint`` (Rule 1)."""
    if isinstance(exc, zmq.ContextTerminated) or exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
        err: WalError = WalClosedError(f"{what}: the client is closed")
    else:
        err = WriterUnavailableError(f"{what}: no writer reachable at {endpoint} ({exc})")
    err.__cause__ = exc
    return err


def ipc_access_problem(endpoint: str) -> str | None:
    """Why this process may not connect to the ``ipc://`` ``endpoint`` (file modes), or None.

    ZeroMQ retries a refused connect silently, so a client the socket's modes shut
    out would only time out; this says "permission denied" and names the path.
    """
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://") :]
    if not path or path.startswith("@") or path == "*":
        return None
    try:
        os.stat(path)
    except PermissionError:
        return f"permission denied: {path} (its directory is not open to this user)"
    except OSError:
        return None  # not there (yet): ZeroMQ keeps trying until the timeout
    if not os.access(path, os.W_OK):
        return f"permission denied: {path} (the socket's mode does not let this user connect)"
    return None


class Connection:
    """A DEALER connected to one writer endpoint, with a disconnect monitor."""

    __slots__ = ("__weakref__", "endpoint", "lost", "monitor", "next_check", "pid", "sock")

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, timeout: float = 10.0):
        self.endpoint = endpoint
        self.pid = current_pid()
        self.lost = False
        self.next_check = 0.0
        problem = ipc_access_problem(endpoint)
        if problem is not None:
            raise WriterUnavailableError(f"connecting to {endpoint}: {problem}")
        sock = ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)  # flow control is the session's in-flight limit
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.RCVTIMEO, min(RECV_SLICE_MS, int(timeout * 1e3) + 1))  # blocking receives only
            sock.connect(endpoint)
            self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            self.monitor.setsockopt(zmq.LINGER, 0)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise zmq_error(exc, "connecting", endpoint) from None
        self.sock = sock

    def lost_since_last_call(self, now: float) -> bool:
        """``check_lost``, at most every LOST_CHECK_S seconds (it costs system calls)."""
        if now < self.next_check and not self.lost:
            return False
        self.next_check = now + LOST_CHECK_S
        return self.check_lost()

    def check_lost(self) -> bool:
        """True once the writer's side of the connection went away (drains monitor events)."""
        if not self.lost:
            mon = self.monitor
            while mon.getsockopt(EVENTS) & POLLIN:  # no zmq.Again exception on the hot path
                mon.recv_multipart(NOBLOCK)
                self.lost = True
        return self.lost

    def send(self, frames: tuple[bytes, ...]) -> None:
        sock = self.sock
        try:
            if len(frames) == 2:
                send_frame(sock, frames[0], SNDMORE_NOBLOCK)
                payload = frames[1]
                send_frame(sock, payload, NOBLOCK, len(payload) < ZERO_COPY_BYTES)
            else:
                send_frame(sock, frames[0], NOBLOCK)
        except zmq.ZMQError as exc:
            raise zmq_error(exc, "sending a request", self.endpoint) from None

    def close(self) -> None:
        """Close (linger 0); in a forked child only forget (Rule 2)."""
        if self.pid != current_pid():
            _ABANDONED.append(self)
            return
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.sock.close(0)


def new_context() -> zmq.Context[Any]:
    ctx: zmq.Context[Any] = zmq.Context(io_threads=1)
    return ctx


def close_context(ctx: zmq.Context[Any], pid: int) -> None:
    """Terminate a context this process made; abandon one inherited through fork."""
    if pid != current_pid():
        _ABANDONED.append(ctx)
        return
    ctx.destroy(linger=0)
