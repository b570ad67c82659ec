"""WalHandler: Python ``logging`` from many processes into one nori-wal log.

    import logging
    from nori_wal import WalHandler
    logging.getLogger().addHandler(WalHandler("wal"))   # the directory a writer process serves
    logging.getLogger("app.db").warning("slow query", extra={"ms": 812})

The logging cookbook's "logging to a single file from multiple processes" needs
a listener process and a queue; here the writer process is the listener, and
every process (forked, spawned, a pool worker, a Celery child) adds a handler.

Rules:
1. ``emit`` never blocks on the writer: it encodes the record (in the logging
   thread, while its arguments are as they were) and puts it in a bounded queue;
   when the queue is full the record is dropped and counted in ``dropped``.
2. One background thread per process sends the queue in order with
   ``append_batch``: a process's records reach the log in the order it logged them.
3. Writer down: a batch whose send fails is dropped and counted (its outcome may
   be unknown: a timed-out request can still have been written, so it is not
   resent, which could duplicate it); the thread waits (0.5 s, doubling up to 5 s)
   and tries again with what is queued by then. One line goes to stderr when
   sending starts failing and one when it works again.
4. A forked child starts empty: it never sends its parent's queued records, and
   starts its own thread and connection on its first record.
5. ``flush`` and ``close`` wait at most ``flush_timeout`` seconds; what is still
   queued after that is counted as dropped. ``logging.shutdown`` (run at exit)
   calls them, and so does a multiprocessing child's exit, so a process's last
   records are sent when the writer is up.

Each record is one nori-wal put: the key is the logger name (UTF-8), the value
a JSON object (``LOG_FIELDS``; the ``extra=`` fields under "extra"), which
``decode_log_record`` reads back and ``format_log_record`` prints as a line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import sys
import threading
import time
import traceback
import weakref
from datetime import datetime
from typing import Any

from .errors import WalClosedError
from .record import BytesLike, Record

LOG_MARKER = "nori_wal_log"  # a field every record of WalHandler carries (value: the format version, 1)
LOG_FIELDS = (
    "time",  # seconds since the epoch (LogRecord.created)
    "level",  # "WARNING"
    "levelno",  # 30
    "logger",  # "app.db"
    "message",  # the formatted message (LogRecord.getMessage())
    "process",  # pid
    "process_name",
    "thread_name",
    "file",  # pathname of the logging call
    "line",
    "function",
    "extra",  # the extra= fields (JSON; a value JSON cannot hold is its repr)
    "exception",  # the formatted traceback, when exc_info was given
    "stack",  # stack_info, when asked for
)

# LogRecord attributes that are not extra= fields (LogRecord.__init__ sets them; taskName is 3.12+).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_STOP = object()
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 5.0  # seconds between attempts while the writer is down


def encode_log_record(record: logging.LogRecord) -> bytes:
    """The JSON value WalHandler stores for ``record`` (compact, UTF-8)."""
    doc: dict[str, Any] = {
        LOG_MARKER: 1,
        "time": record.created,
        "level": record.levelname,
        "levelno": record.levelno,
        "logger": record.name,
        "message": record.getMessage(),
        "process": record.process,
        "process_name": record.processName,
        "thread_name": record.threadName,
        "file": record.pathname,
        "line": record.lineno,
        "function": record.funcName,
    }
    extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    if extra:
        doc["extra"] = extra
    if record.exc_info and record.exc_info[0] is not None:
        doc["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    elif record.exc_text:
        doc["exception"] = record.exc_text
    if record.stack_info:
        doc["stack"] = record.stack_info
    return json.dumps(doc, default=repr, ensure_ascii=False, separators=(",", ":")).encode()


def decode_log_record(value: BytesLike) -> dict[str, Any]:
    """The fields of a value WalHandler wrote; ValueError if ``value`` is not one."""
    try:
        doc = json.loads(bytes(value))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a WalHandler log record (not JSON)") from None
    if not isinstance(doc, dict) or doc.get(LOG_MARKER) != 1:
        raise ValueError("not a WalHandler log record (no nori_wal_log marker)")
    return doc


def format_log_record(value: BytesLike) -> str:
    """One readable line (a traceback adds lines) for a value WalHandler wrote; ValueError if it is not one.

    ``2026-01-05 14:03:07.123 WARNING  app.db [pid 4242 MainProcess] slow query  ms=812``
    (local time, as logging's default format shows it).
    """
    doc = decode_log_record(value)
    try:
        when = datetime.fromtimestamp(float(doc.get("time", 0))).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError, OSError):
        when = "?"
    line = (
        f"{when} {doc.get('level', '?'):<8} {doc.get('logger', '?')} "
        f"[pid {doc.get('process', '?')} {doc.get('process_name', '?')}] {doc.get('message', '')}"
    )
    extra = doc.get("extra")
    if isinstance(extra, dict) and extra:
        line += "  " + " ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in extra.items())
    for tail in ("exception", "stack"):
        if doc.get(tail):
            line += "\n" + str(doc[tail])
    return line


class WalHandler(logging.Handler):
    """A logging handler that appends each record to a nori-wal log through a writer process.

    ``target`` is the log directory a writer serves (``WalClient.for_dir``), a
    writer endpoint (``ipc://...``, ``tcp://...``) or a ``WalClient`` (the handler
    makes its own client with the same endpoint and timeout and closes that one;
    the one passed is left alone). ``queue_size`` bounds the records waiting to be
    sent (``emit`` never waits: see the module's rules); ``batch_size`` bounds one
    ``append_batch``; ``timeout`` is the client's (seconds a send may wait for the
    writer); ``flush_timeout`` bounds ``flush`` and ``close``.

    ``sent`` counts the records acknowledged, ``dropped`` those dropped (queue full,
    a failed send, or still queued when ``close`` gave up).
    """

    def __init__(
        self,
        target: Any,
        level: int = logging.NOTSET,
        *,
        queue_size: int = 10_000,
        batch_size: int = 512,
        timeout: float = 5.0,
        flush_timeout: float = 5.0,
    ):
        super().__init__(level)
        if type(queue_size) is not int or queue_size < 1:
            raise ValueError(f"WalHandler queue_size must be an int >= 1, got {queue_size!r}")
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"WalHandler batch_size must be an int >= 1, got {batch_size!r}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"WalHandler timeout must be a finite number of seconds > 0, got {timeout!r}")
        if not flush_timeout >= 0:
            raise ValueError(f"WalHandler flush_timeout must be >= 0 seconds, got {flush_timeout!r}")
        _check_target(target)
        self._target, self.timeout = target, float(timeout)
        self._client: Any = None  # made by the sender thread on its first send (a writer need not be up yet)
        self.target = os.fspath(target) if isinstance(target, (str, os.PathLike)) else target.endpoint
        self.queue_size, self.batch_size, self.flush_timeout = queue_size, batch_size, float(flush_timeout)
        self._closed = False
        self._reset()
        _HANDLERS.add(self)

    def _reset(self) -> None:
        """A fresh queue and no thread (at start, and in a forked child: rule 4)."""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._state = threading.Condition(threading.Lock())
        self._queued = 0  # records in the queue or being sent; at most queue_size
        self._thread: threading.Thread | None = None
        self._failing = False
        self.sent = 0
        self.dropped = 0

    # -- the application's side (never blocks on the writer) -------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            item = Record.put(record.name.encode("utf-8", "backslashreplace"), encode_log_record(record))
        except Exception:
            self.handleError(record)
            return
        with self._state:
            if self._closed:
                return
            if self._queued >= self.queue_size:
                self.dropped += 1
                return
            self._queued += 1
            if self._thread is None:
                self._start_thread()
        self._queue.put(item)

    def _start_thread(self) -> None:
        """The sender thread of this process, and a flush when a multiprocessing child ends.

        multiprocessing ends a child with ``os._exit``, which skips ``logging.shutdown``
        (atexit); its own exit hooks still run, so a child's last records are sent.
        """
        from multiprocessing.util import Finalize

        self._thread = threading.Thread(target=self._run, name="nori-wal-log-sender", daemon=True)
        self._thread.start()
        Finalize(None, self.flush, exitpriority=10)

    def flush(self) -> None:
        """Wait (at most ``flush_timeout`` seconds) until what was logged so far is sent or dropped."""
        deadline = time.monotonic() + self.flush_timeout
        with self._state:
            while self._queued and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._state.wait(left)

    def close(self) -> None:
        """Send what is queued (bounded by ``flush_timeout``), stop the thread, close the client."""
        with self._state:
            if self._closed:
                super().close()
                return
        self.flush()
        with self._state:
            self._closed = True
            thread = self._thread
            self._state.notify_all()  # ends a backoff wait
        self._queue.put(_STOP)
        if thread is not None and thread.is_alive():
            thread.join(0.5)
        with self._state:
            client = self._client
        if client is not None:
            client.close()  # a send still in progress raises WalClosedError within a receive slice
        if thread is not None:
            thread.join(1.0)
        with self._state:
            self.dropped += self._queued  # anything left behind when the bound ran out
            self._queued = 0
        super().close()

    def __repr__(self) -> str:
        return f"<WalHandler {self.target} ({logging.getLevelName(self.level)})>"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as its settings (a spawned child gets its own queue, thread and connection)."""
        opts = (self.queue_size, self.batch_size, self.timeout, self.flush_timeout)
        return (_rebuild, (self._target, self.level, *opts))

    # -- the sender thread ----------------------------------------------------------------------

    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._connected().append_batch(batch)
            except WalClosedError:
                self._settle(len(batch), ok=False)
                return
            except Exception as exc:  # WalError mostly; anything else must not end the thread either
                self._settle(len(batch), ok=False)
                self._say_failing(exc)
                if self._sleep(backoff):
                    return
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            self._settle(len(batch), ok=True)
            backoff = _BACKOFF_FIRST

    def _connected(self) -> Any:
        """This handler's own client (made on first use; a WalError from making it counts as a failed send)."""
        if self._client is None:
            client = _own_client(self._target, self.timeout)
            with self._state:
                if self._closed:
                    client.close()
                    raise WalClosedError("the handler was closed")
                self._client = client
        return self._client

    def _take_batch(self) -> list[Record] | None:
        """Up to batch_size queued records (waiting for the first); None once stopped."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # seen again after this batch
                break
            batch.append(item)
        return batch

    def _settle(self, n: int, ok: bool) -> None:
        with self._state:
            self._queued -= n
            if ok:
                self.sent += n
                if self._failing:
                    self._failing = False
                    _say(f"nori-wal WalHandler: sending to {self.target} works again")
            else:
                self.dropped += n
            self._state.notify_all()

    def _say_failing(self, exc: Exception) -> None:
        with self._state:
            if self._failing:
                return
            self._failing = True
        _say(f"nori-wal WalHandler: cannot send log records to {self.target} ({exc}); dropping them until it answers")

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (woken early by close); True once the handler is closed."""
        with self._state:
            if not self._closed:
                self._state.wait(seconds)
            return self._closed


def _check_target(target: Any) -> None:
    from .client import WalClient

    if not isinstance(target, (str, os.PathLike, WalClient)):
        raise TypeError(
            f"WalHandler target must be a log directory, a writer endpoint or a WalClient, got {type(target).__name__}"
        )


def _own_client(target: Any, timeout: float) -> Any:
    """A new WalClient for ``target`` (directory, endpoint, or a client to copy), owned by the handler."""
    import pickle

    from .client import WalClient

    if isinstance(target, WalClient):
        client = pickle.loads(pickle.dumps(target))  # same endpoint (or directory) and settings, a new client
        client.timeout = float(timeout)
        return client
    text = os.fspath(target)
    if "://" in text:
        return WalClient(text, timeout)
    return WalClient.for_dir(text, timeout)


def _rebuild(client: Any, level: int, queue_size: int, batch_size: int, timeout: float, flush: float) -> WalHandler:
    return WalHandler(client, level, queue_size=queue_size, batch_size=batch_size, timeout=timeout, flush_timeout=flush)


def _say(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr closed: nothing else to tell


_HANDLERS: weakref.WeakSet[WalHandler] = weakref.WeakSet()


def _forget_in_child() -> None:
    for handler in list(_HANDLERS):
        handler._reset()


os.register_at_fork(after_in_child=_forget_in_child)
