"""What both clients share: their settings, finding a writer by directory, and pickling."""

from __future__ import annotations

import os
import threading
from typing import Any, TypeVar

from .session import MAX_IN_FLIGHT
from .transport import current_pid

DEFAULT_TIMEOUT = 10.0   # seconds without any reply before WriterUnavailableError

C = TypeVar("C", bound="ClientBase")


class ClientBase:
    """Endpoint, timeout and in-flight bound of a client; pickles as its constructor arguments."""

    def __init__(self, endpoint: str, timeout: float = DEFAULT_TIMEOUT, *, max_in_flight: int = MAX_IN_FLIGHT):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._endpoint = endpoint
        self._dir: str | None = None
        self.timeout = float(timeout)
        self.max_in_flight = max_in_flight
        self._lock = threading.RLock()
        self._ctx: Any = None
        self._pid = current_pid()
        self._closed = False

    @classmethod
    def for_dir(cls: type[C], directory: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT, *,
                max_in_flight: int = MAX_IN_FLIGHT) -> C:
        """A client of the writer serving ``directory`` (found through DIR/WRITER, else the default endpoint).

        The endpoint is looked up again whenever a new connection is made, so
        a writer restarted on another endpoint is found too.
        """
        from ..writer_proc.endpoint import resolve_endpoint
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
