"""The writer's wake-up socket: tells followers (consumers, ``dump --follow``) that the durable end moved.

A ZeroMQ PUB socket beside the writer's endpoint (``endpoint_file.notify_endpoint_for``),
recorded in DIR/WRITER as ``notify``. After each fsync that moves the durable
position the loop calls ``moved``, which sends one 16-byte message (segment_id,
offset: two little-endian u64) -- at most one per fsync, and none when the
position did not move.

Rules:
1. It never blocks or fails the writer: a tiny SNDHWM and NOBLOCK, so a slow or
   absent subscriber loses messages (PUB drops past the HWM), never delays an
   acknowledgement; a socket that cannot be bound leaves the writer without one
   (followers then poll DIR/DURABLE).
2. A message is a hint: followers re-read DIR/DURABLE (the truth) when one
   arrives and at least every few tens of milliseconds anyway, so a dropped
   message costs latency, never a record.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from typing import Any

import zmq

from ..endpoint_file import notify_endpoint_for
from ..fs import chmod_socket
from ..position import Position

log = logging.getLogger("nori_wal.writer")

NOTIFY_HWM = 4  # messages queued per subscriber; past it PUB drops (Rule 1)
WAKEUP = struct.Struct("<QQ")  # the durable position: segment_id, offset
_NOBLOCK = int(zmq.NOBLOCK)


class Notifier:
    """The PUB socket and the last position it published (only the writer loop's thread uses it)."""

    def __init__(self, sock: zmq.Socket[Any] | None, endpoint: str | None):
        self._sock = sock
        self.endpoint = endpoint  # what followers connect to (None: no socket)
        self._last: Position | None = None
        self.sent = 0
        self.dropped = 0
        self._ipc_inode: int | None = None
        if endpoint is not None and endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
            try:
                self._ipc_inode = os.stat(endpoint[len("ipc://") :]).st_ino
            except OSError:
                pass

    def moved(self, durable: Position) -> None:
        """The durable end is ``durable`` now: publish it if it moved (one message, never blocking)."""
        if durable == self._last or self._sock is None:
            return
        self._last = durable
        try:
            self._sock.send(WAKEUP.pack(durable[0], durable[1]), _NOBLOCK)
            self.sent += 1
        except zmq.ZMQError:  # Again (a full queue) or anything else: a lost hint (Rule 2)
            self.dropped += 1

    def close(self) -> None:
        """Close the socket (no linger) and remove its ipc socket file if it is still ours. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close(0)
        if self._ipc_inode is not None and self.endpoint is not None:
            path = self.endpoint[len("ipc://") :]
            try:
                if os.stat(path).st_ino == self._ipc_inode:
                    os.unlink(path)
            except OSError:
                pass


NO_NOTIFIER = Notifier(None, None)


def open_notifier(ctx: zmq.Context[Any], writer_endpoint: str) -> Notifier:
    """Bind the wake-up socket for the writer serving ``writer_endpoint``; a socket-less one on failure."""
    where = notify_endpoint_for(writer_endpoint)
    if where is None:
        return Notifier(None, None)
    if where.startswith("ipc://") and not where.startswith("ipc://@"):
        path = where[len("ipc://") :]
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                log.warning("wake-up socket %s: the path exists and is not a socket; followers will poll", path)
                return Notifier(None, None)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("wake-up socket %s: %s; followers will poll", path, exc)
            return Notifier(None, None)
    sock: zmq.Socket[Any] = ctx.socket(zmq.PUB)
    try:
        sock.setsockopt(zmq.SNDHWM, NOTIFY_HWM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(where)
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        bound = last.decode() if isinstance(last, bytes) else str(last)
    except zmq.ZMQError as exc:
        sock.close(0)
        log.warning("cannot bind the wake-up socket %s: %s; followers will poll", where, exc)
        return Notifier(None, None)
    if where.startswith("ipc://") and not where.startswith("ipc://@"):
        chmod_socket(where[len("ipc://") :])  # owner-only like the writer's socket (fs.modes_under)
    if bound.startswith("tcp://0.0.0.0:"):
        bound = "tcp://127.0.0.1:" + bound.rsplit(":", 1)[1]  # what a local follower can connect to
    return Notifier(sock, bound or where)


__all__ = ["NOTIFY_HWM", "NO_NOTIFIER", "WAKEUP", "Notifier", "open_notifier"]
