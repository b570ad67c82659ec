"""What both clients share: their settings, finding a writer by directory, and pickling."""

from __future__ import annotations

import math
import operator
import os
import threading
import weakref
from typing import Any, TypeVar

from ..errors import ProtocolError
from ..position import Position
from .session import MAX_IN_FLIGHT
from .transport import current_pid

DEFAULT_TIMEOUT = 10.0  # seconds without any reply before WriterUnavailableError

C = TypeVar("C", bound="ClientBase")

# Every live client (sync and asyncio), for the at-fork hook below.
_CLIENTS: weakref.WeakSet[ClientBase] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """In a forked child: another parent thread may have held a client's lock at the fork, and no
    thread of the child will ever release it; every client gets a fresh one (and see _after_fork)."""
    for client in list(_CLIENTS):
        client._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def checked_position(position: Any) -> Position:
    """``position`` as a Position whose segment id and offset fit the protocol's unsigned 64 bits.

    Raises TypeError for a non-integer field and ProtocolError for one out of
    range, before anything is sent: the same class the writer answers a
    negative one with (msgpack could not even encode one of 2**64 or more).
    """
    seg, off = position
    out = []
    for name, x in (("segment_id", seg), ("offset", off)):
        try:
            v = operator.index(x)
        except TypeError:
            raise TypeError(f"position {name} must be an int, got {type(x).__name__}") from None
        if not 0 <= v < 2**64:
            raise ProtocolError(
                f"position {name} {v} is out of range: it must not be negative and must be "
                f"below 2**64 (the request cannot carry it)"
            )
        out.append(v)
    return Position(out[0], out[1])


class ClientBase:
    """Endpoint, timeout and in-flight bound of a client; pickles as its constructor arguments."""

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT, *, max_in_flight: int = MAX_IN_FLIGHT):
        if not (timeout > 0 and math.isfinite(timeout)):  # a call must never hang: no infinite timeout
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self._endpoint = endpoint
        self._dir: str | None = None
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self._lock = threading.RLock()
        self._ctx: Any = None
        self._pid = current_pid()
        self._closed = False
        _CLIENTS.add(self)

    def _after_fork(self) -> None:
        """Called in a forked child (before any other code runs there): a fresh lock."""
        self._lock = threading.RLock()

    @classmethod
    def for_dir(
        cls: type[C],
        directory: str | os.PathLike[str],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> C:
        """A client of the writer serving ``directory`` (found through DIR/WRITER, else the default endpoint).

        The endpoint is looked up again whenever a new connection is made, so
        a writer restarted on another endpoint is found too.
        """
        from ..endpoint_file import resolve_endpoint

        client = cls(resolve_endpoint(directory), timeout, max_in_flight=max_in_flight)
        client._dir = os.fspath(directory)
        return client

    @property
    def endpoint(self) -> str:
        return self._endpoint

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._endpoint, self._dir, self.timeout, self.max_in_flight))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._endpoint!r}, timeout={self.timeout:g})"


def _rebuild(cls: Any, endpoint: str, directory: str | None, timeout: float, max_in_flight: int) -> Any:
    """Unpickle a client as its constructor arguments (it reconnects lazily on the other side)."""
    if directory is not None:
        return cls.for_dir(directory, timeout, max_in_flight=max_in_flight)
    return cls(endpoint, timeout, max_in_flight=max_in_flight)
