"""Where a directory's writer listens: the default ipc:// endpoint and the DIR/WRITER file.

Shared by the writer (which records itself) and the clients (which look it up):
the one place that knows the file's name, its format and when a record names a
live writer.

The default endpoint is a function of the directory alone: ``DIR/writer.sock``
when that path fits in a Unix socket address (108 bytes on Linux), else the
runtime endpoint: a socket in a private directory of ``$XDG_RUNTIME_DIR`` (or
the temp dir) named after a hash of the directory's real path. The writer also
serves there when the directory's file system cannot hold a socket. A running
writer also records its endpoint and pid in ``DIR/WRITER`` (JSON, replaced
atomically), which is what ``WalClient.for_dir`` reads: it covers ``--endpoint tcp://...`` and ephemeral ports.

Rules:
1. A writer writes DIR/WRITER once it is bound and removes it (if still its
   own) once its socket is closed: a live writer always has one.
2. A record names a live writer only while its pid runs and holds the
   directory's lock (``find_writer``); judged only from the writer's own PID
   namespace, else the record is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

from .fs import open_private, writer_lock_holder

ENDPOINT_FILE = "WRITER"
SOCKET_NAME = "writer.sock"
_MAX_IPC_PATH = 100  # bytes; sun_path holds 108 with its NUL, keep a margin


def default_endpoint(directory: str | os.PathLike[str]) -> str:
    """The ipc:// endpoint tied to ``directory`` (deterministic: same answer in every process)."""
    real = os.path.realpath(os.fspath(directory))
    path = os.path.join(real, SOCKET_NAME)
    if len(path.encode()) <= _MAX_IPC_PATH:
        return "ipc://" + path
    return runtime_endpoint(real)


def runtime_endpoint(directory: str | os.PathLike[str]) -> str:
    """``ipc://RUN/nori-wal-HASH/writer.sock``: where the writer of ``directory`` listens when the
    directory itself cannot hold its socket (RUN: ``$XDG_RUNTIME_DIR`` or the temp dir; HASH: of the
    directory's real path). The writer makes ``nori-wal-HASH`` private to its user before binding."""
    real = os.path.realpath(os.fspath(directory))
    run_dir = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    digest = hashlib.sha256(real.encode()).hexdigest()[:20]
    return "ipc://" + os.path.join(run_dir, f"nori-wal-{digest}", SOCKET_NAME)


@dataclass(frozen=True)
class EndpointRecord:
    """What DIR/WRITER says."""

    endpoint: str
    pid: int
    pid_ns: int | None = None  # the writer's PID namespace: its pid means nothing from another one
    curve_server_key: str | None = None  # the writer's CURVE public key (Z85) when it requires CURVE
    notify: str | None = None  # the writer's wake-up PUB socket (None: it has none; followers poll)


@dataclass(frozen=True)
class WriterFound:
    """``find_writer``'s answer: the live writer's endpoint, or None and why there is none."""

    endpoint: str | None
    reason: str = ""
    curve_server_key: str | None = None  # the writer's CURVE public key (Z85), when it requires CURVE


def _pid_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def write_endpoint_file(
    directory: str, endpoint: str, pid: int, curve_server_key: str | None = None, notify: str | None = None
) -> None:
    """Record the serving endpoint in DIR/WRITER (tmp file + rename: readers never see half of it).

    ``curve_server_key``: the writer's CURVE public key (Z85 text; public, so it may
    be recorded) that clients of ``for_dir`` authenticate the writer with.
    ``notify``: the writer's wake-up PUB socket. On failure (a full disk) nothing is left behind.
    """
    path = os.path.join(directory, ENDPOINT_FILE)
    tmp = f"{path}.{pid}.tmp"
    data: dict[str, object] = {"endpoint": endpoint, "pid": pid, "pid_ns": _pid_ns()}
    if curve_server_key is not None:
        data["curve_server_key"] = curve_server_key
    if notify is not None:
        data["notify"] = notify
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_endpoint_file(directory: str | os.PathLike[str]) -> EndpointRecord | None:
    """The endpoint a writer recorded in ``directory``, or None if there is none (or it is unreadable)."""
    try:
        with open(os.path.join(os.fspath(directory), ENDPOINT_FILE)) as f:
            data = json.load(f)
        ns, key, notify = data.get("pid_ns"), data.get("curve_server_key"), data.get("notify")
        return EndpointRecord(
            str(data["endpoint"]),
            int(data["pid"]),
            None if ns is None else int(ns),
            None if key is None else str(key),
            None if notify is None else str(notify),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def remove_endpoint_file(directory: str, pid: int) -> None:
    """Remove DIR/WRITER if it is still ours (a newer writer may have replaced it)."""
    rec = read_endpoint_file(directory)
    if rec is not None and rec.pid == pid:
        try:
            os.unlink(os.path.join(directory, ENDPOINT_FILE))
        except OSError:
            pass


def notify_endpoint_for(endpoint: str) -> str | None:
    """Where the writer serving ``endpoint`` binds its wake-up PUB socket (None: a transport without one).

    ipc: a socket beside the writer's (``PATH.pub``; a hashed name in the run dir
    when that is too long for a socket address); tcp: any free port on the same
    host (``tcp://HOST:*``: the bound port is what DIR/WRITER records).
    """
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if path.startswith("@"):
            return f"ipc://{path}.pub"
        pub = path + ".pub"
        if len(pub.encode()) <= _MAX_IPC_PATH:
            return "ipc://" + pub
        run_dir = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        digest = hashlib.sha256(path.encode()).hexdigest()[:20]
        return "ipc://" + os.path.join(run_dir, f"nori-wal-{digest}.pub.sock")
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
        return f"tcp://{host}:*"
    return None


def live_record(directory: str | os.PathLike[str]) -> EndpointRecord | None:
    """DIR/WRITER's record if its writer may be running (its pid runs, judged in its own PID namespace).

    Cheaper than ``find_writer`` (no lock probe): for followers, which only use
    it to decide where to listen for wake-ups, never to send anything.
    """
    rec = read_endpoint_file(directory)
    if rec is None or (rec.pid_ns is not None and rec.pid_ns == _pid_ns() and not pid_alive(rec.pid)):
        return None
    return rec


def resolve_endpoint(directory: str | os.PathLike[str]) -> str:
    """The endpoint a client names for ``directory``: the recorded one, else the default."""
    return recorded_endpoint(directory) or default_endpoint(directory)


def recorded_endpoint(directory: str | os.PathLike[str]) -> str | None:
    """The endpoint DIR/WRITER records, if the writer that wrote it holds the directory now; else None."""
    return find_writer(directory).endpoint


def find_writer(directory: str | os.PathLike[str]) -> WriterFound:
    """The endpoint of the live writer serving ``directory``, or why there is none (Rule 2).

    A record is ignored when its writer is gone (its pid is dead, or nobody holds
    the directory's lock) or when another process holds the lock (a copy of a
    live directory carries the original's record): its endpoint may belong to
    another directory's writer, which would acknowledge appends into, or delete
    segments of, the wrong log.
    """
    path = os.fspath(directory)
    rec = read_endpoint_file(path)
    if rec is None and not os.access(path, os.R_OK | os.X_OK) and os.path.exists(path):
        return WriterFound(None, f"permission denied: {path} (the log directory is not open to this user)")
    if rec is None:
        return WriterFound(None, f"no writer is serving {path}: it has no readable {ENDPOINT_FILE} file")
    if rec.pid_ns is None or rec.pid_ns != _pid_ns():
        return WriterFound(rec.endpoint, curve_server_key=rec.curve_server_key)
    stale = f"no writer is serving {path}: its {ENDPOINT_FILE} file names pid {rec.pid}"
    if not pid_alive(rec.pid):
        return WriterFound(None, f"{stale}, which is not running")
    holder = writer_lock_holder(path)
    if holder == 0:
        return WriterFound(None, f"{stale}, which does not hold the directory's lock")
    if holder is not None and holder != rec.pid:
        return WriterFound(None, f"{stale}, but pid {holder} holds the directory's lock")
    return WriterFound(rec.endpoint, curve_server_key=rec.curve_server_key)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (in this PID namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OverflowError, ValueError):
        return False
    return True


__all__ = [
    "ENDPOINT_FILE",
    "SOCKET_NAME",
    "EndpointRecord",
    "WriterFound",
    "default_endpoint",
    "find_writer",
    "live_record",
    "notify_endpoint_for",
    "read_endpoint_file",
    "recorded_endpoint",
    "remove_endpoint_file",
    "resolve_endpoint",
    "runtime_endpoint",
    "write_endpoint_file",
]
