"""The client core both clients share: settings, connections per process, finding a writer, pickling.

``WalClient`` (one connection per thread) and ``AsyncWalClient`` (one per
event loop) keep their connections in ``ClientBase._conns`` and make each new
one through ``_connection_target``, which owns the rules below; ``Session``
(``session``) owns what goes over a connection.

Rules:
1. After a fork the child forgets its parent's context and connections, never
   touching them (``transport`` Rule 2), and builds its own on first use.
2. A client made by ``for_dir`` looks the writer up again for every new
   connection (a restarted writer is found on its new endpoint) and raises
   WriterUnavailableError at once when no live writer serves the directory
   (no DIR/WRITER file, or its pid is dead): it does not wait ``timeout`` for
   nobody.
3. A client pickles as its constructor arguments and reconnects lazily on the
   other side.
4. CURVE (``curve_server_key`` + ``curve_secret``, paths or key bytes) is set on
   the client's context, so every socket it makes authenticates; ``for_dir``
   takes the writer's public key from DIR/WRITER and the client's own from
   ``curve_secret``.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import threading
import weakref
from typing import Any, Generic, Protocol, TypeVar

import zmq

from ..endpoint_file import find_writer, resolve_endpoint
from ..errors import ProtocolError, WalClosedError, WriterUnavailableError
from ..position import Position
from ..retention import GcPlan
from ..security import ClientCurve, KeySource, key_pair
from .retry import check_delivery_timeout
from .session import MAX_IN_FLIGHT
from .transport import Connection, close_context, current_pid, new_context

_log = logging.getLogger("nori_wal.client")

DEFAULT_TIMEOUT = 10.0  # seconds without any reply before WriterUnavailableError


class HasConnection(Protocol):
    """A client's per-thread or per-loop connection holder."""

    @property
    def conn(self) -> Connection: ...


K = TypeVar("K", bound=HasConnection)
C = TypeVar("C", bound="ClientBase[Any]")

# Every live client (sync and asyncio), for the at-fork hook below.
_CLIENTS: weakref.WeakSet[ClientBase[Any]] = weakref.WeakSet()


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


class ClientBase(Generic[K]):
    """Endpoint, timeout and in-flight bound of a client; its context and connections (``K``) per process."""

    def __init__(
        self,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        curve_server_key: KeySource | None = None,
        curve_secret: KeySource | None = None,
        delivery_timeout: float | None = None,
    ):
        if not (timeout > 0 and math.isfinite(timeout)):  # a call must never hang: no infinite timeout
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        self._curve = ClientCurve.make(curve_server_key, curve_secret)  # Rule 4
        self._curve_secret = curve_secret
        # None: a call whose outcome is unknown raises WriterUnavailableError; else it is retried (client.retry)
        self.delivery_timeout = check_delivery_timeout(delivery_timeout)
        self._endpoint = endpoint
        self._dir: str | None = None
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self.last_gc: GcPlan | None = None  # the last delete_segments_before's plan (see gc_done)
        self._lock = threading.RLock()
        self._ctx: zmq.Context[Any] | None = None
        self._conns: list[K] = []
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
        curve_secret: KeySource | None = None,
        delivery_timeout: float | None = None,
    ) -> C:
        """A client of the writer serving ``directory`` (found through DIR/WRITER, else the default endpoint).

        The endpoint is looked up again whenever a new connection is made, so
        a writer restarted on another endpoint is found too; a call made when
        no live writer serves the directory raises WriterUnavailableError at
        once (Rule 2). A writer that requires CURVE records its public key there
        too; ``curve_secret`` is this client's own key (Rule 4).
        """
        client = cls(
            resolve_endpoint(directory), timeout, max_in_flight=max_in_flight, delivery_timeout=delivery_timeout
        )
        client._dir = os.fspath(directory)
        client._curve_secret = curve_secret
        if curve_secret is not None:
            key_pair(curve_secret)  # a bad key fails here, not at the first call
        return client

    @property
    def endpoint(self) -> str:
        return self._endpoint

    # -- making connections (under ``_lock``) ---------------------------------------------------

    def _check_process(self) -> bool:
        """Before a new connection: WalClosedError once closed; after a fork, forget the parent's
        context and connections (Rule 1) and return True."""
        if self._closed:
            raise WalClosedError("the client is closed")
        pid = current_pid()
        if pid == self._pid:
            return False
        if self._ctx is not None:
            close_context(self._ctx, self._pid)
        for c in self._conns:
            c.conn.close()
        self._ctx, self._conns, self._pid = None, [], pid
        return True

    def _connection_target(self) -> tuple[zmq.Context[Any], str]:
        """The context (made on first use) and the endpoint a new connection should use (Rule 2)."""
        if self._ctx is None:
            self._ctx = new_context()
            if self._curve is not None:
                self._curve.apply(self._ctx)
        if self._dir is not None:
            found = find_writer(self._dir)
            if found.endpoint is None:
                raise WriterUnavailableError(found.reason)
            self._endpoint = found.endpoint
            self._use_recorded_key(found.curve_server_key)
        return self._ctx, self._endpoint

    def _use_recorded_key(self, server_key: str | None) -> None:
        """Rule 4 for ``for_dir``: CURVE with the key the writer recorded, or none when it recorded none."""
        assert self._ctx is not None
        if server_key is None:
            if self._curve is not None:  # a restarted writer without CURVE: plain sockets again
                self._curve = None
                for opt in (zmq.CURVE_SERVERKEY, zmq.CURVE_PUBLICKEY, zmq.CURVE_SECRETKEY):
                    self._ctx.sockopts.pop(opt, None)
            return
        if self._curve_secret is None:
            raise WriterUnavailableError(
                f"the writer serving {self._dir} requires CURVE authentication: "
                f"give this client its key (for_dir(..., curve_secret=PATH))"
            )
        if self._curve is None or self._curve.server_key != server_key.encode():
            self._curve = ClientCurve.make(server_key.encode(), self._curve_secret)
            assert self._curve is not None
            self._curve.apply(self._ctx)

    def gc_done(self, before: Position, plan: GcPlan) -> int:
        """Keep the writer's GC plan in ``last_gc`` (as ``Wal.last_gc``) and warn here when consumers'
        cursors held segments back or retention expired one; the count deleted."""
        self.last_gc = plan
        held = plan.describe(before)
        if held is not None:
            _log.warning("writer at %s: %s", self._endpoint, held)
        return len(plan.delete)

    def __reduce__(self) -> tuple[Any, ...]:
        keys = (None, self._curve_secret) if self._dir is not None else (self._server_key_arg(), self._curve_secret)
        args = (type(self), self._endpoint, self._dir, self.timeout, self.max_in_flight, *keys, self.delivery_timeout)
        return (_rebuild, args)

    def _server_key_arg(self) -> bytes | None:
        return None if self._curve is None else self._curve.server_key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._endpoint!r}, timeout={self.timeout:g})"


def _rebuild(
    cls: Any,
    endpoint: str,
    directory: str | None,
    timeout: float,
    max_in_flight: int,
    server_key: KeySource | None = None,
    secret: KeySource | None = None,
    delivery_timeout: float | None = None,
) -> Any:
    """Unpickle a client as its constructor arguments (it reconnects lazily on the other side)."""
    if directory is not None:
        return cls.for_dir(
            directory, timeout, max_in_flight=max_in_flight, curve_secret=secret, delivery_timeout=delivery_timeout
        )
    return cls(
        endpoint,
        timeout,
        max_in_flight=max_in_flight,
        curve_server_key=server_key,
        curve_secret=secret,
        delivery_timeout=delivery_timeout,
    )
