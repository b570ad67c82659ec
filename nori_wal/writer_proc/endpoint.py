"""Where a directory's writer listens: the default ipc:// endpoint and the DIR/WRITER file.

The default endpoint is a function of the directory alone, so a client can be
created (``WalClient.for_dir``) before the writer starts: ``DIR/writer.sock``
when that path fits in a Unix socket address (108 bytes on Linux), else a
socket in ``$XDG_RUNTIME_DIR`` (or the temp dir) named after a hash of the
directory's real path. A running writer also records its endpoint and pid in
``DIR/WRITER`` (JSON, replaced atomically), which is what ``for_dir`` reads
first: it covers ``--endpoint tcp://...`` and ephemeral ports.

An ipc:// path is claimed before it is bound (``claim_ipc``): an flock on
``PATH.lock``, held for the writer's life. ZeroMQ's bind silently replaces
whatever is at the path, so two writers (of two directories) starting at once
on one explicit endpoint would otherwise both serve, and a client of one
would be acknowledged into the other's log. A path that exists and is not a
socket is never replaced.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import tempfile
from dataclasses import dataclass

from ..fs import writer_lock_holder

ENDPOINT_FILE = "WRITER"
SOCKET_NAME = "writer.sock"
_MAX_IPC_PATH = 100  # bytes; sun_path holds 108 with its NUL, keep a margin


def default_endpoint(directory: str | os.PathLike[str]) -> str:
    """The ipc:// endpoint tied to ``directory`` (deterministic: same answer in every process)."""
    real = os.path.realpath(os.fspath(directory))
    path = os.path.join(real, SOCKET_NAME)
    if len(path.encode()) <= _MAX_IPC_PATH:
        return "ipc://" + path
    run_dir = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    digest = hashlib.sha256(real.encode()).hexdigest()[:20]
    return "ipc://" + os.path.join(run_dir, f"nori-wal-{digest}.sock")


@dataclass(frozen=True)
class EndpointRecord:
    endpoint: str
    pid: int
    pid_ns: int | None = None  # the writer's PID namespace: its pid means nothing from another one


def _pid_ns() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def write_endpoint_file(directory: str, endpoint: str, pid: int) -> None:
    """Record the serving endpoint in DIR/WRITER (tmp file + rename: readers never see half of it)."""
    path = os.path.join(directory, ENDPOINT_FILE)
    tmp = f"{path}.{pid}.tmp"
    with open(tmp, "w") as f:
        json.dump({"endpoint": endpoint, "pid": pid, "pid_ns": _pid_ns()}, f)
    os.replace(tmp, path)


def read_endpoint_file(directory: str | os.PathLike[str]) -> EndpointRecord | None:
    """The endpoint a writer recorded in ``directory``, or None if there is none (or it is unreadable)."""
    try:
        with open(os.path.join(os.fspath(directory), ENDPOINT_FILE)) as f:
            data = json.load(f)
        ns = data.get("pid_ns")
        return EndpointRecord(str(data["endpoint"]), int(data["pid"]), None if ns is None else int(ns))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_endpoint_file(directory: str, pid: int) -> None:
    """Remove DIR/WRITER if it is still ours (a newer writer may have replaced it)."""
    rec = read_endpoint_file(directory)
    if rec is not None and rec.pid == pid:
        try:
            os.unlink(os.path.join(directory, ENDPOINT_FILE))
        except OSError:
            pass


def resolve_endpoint(directory: str | os.PathLike[str]) -> str:
    """The endpoint a client should use for ``directory``: the recorded one, else the default."""
    return recorded_endpoint(directory) or default_endpoint(directory)


def recorded_endpoint(directory: str | os.PathLike[str]) -> str | None:
    """The endpoint DIR/WRITER records, if the writer that wrote it holds the directory now; else None.

    A record is ignored when its writer is gone (its pid is dead, or nobody holds
    the directory's lock) or when another process holds the lock (a copy of a
    live directory carries the original's record): its endpoint may belong to
    another directory's writer, which would acknowledge appends into, or delete
    segments of, the wrong log. Only judged from the writer's own PID namespace
    (a client in another container cannot see its pid or its lock in /proc),
    else the record is trusted.
    """
    rec = read_endpoint_file(directory)
    if rec is None:
        return None
    if rec.pid_ns is not None and rec.pid_ns == _pid_ns():
        holder = writer_lock_holder(os.fspath(directory))
        if not _pid_alive(rec.pid) or holder == 0 or (holder is not None and holder != rec.pid):
            return None
    return rec.endpoint


def _pid_alive(pid: int) -> bool:
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


def ipc_in_use(endpoint: str) -> bool:
    """Whether a process listens on the ``ipc://`` ``endpoint`` now (ZeroMQ would silently take it over)."""
    if not endpoint.startswith("ipc://"):
        return False
    path = endpoint[len("ipc://") :]
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:  # refused: a socket file left by a dead process
            return False
    return True


class EndpointBusy(Exception):
    """The ipc:// path is another process's (or not a socket at all): the writer must not bind it."""


class IpcClaim:
    """A writer's exclusive hold on an ipc:// socket path, from before its bind to after its unlink."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd
        self._inode: int | None = None

    def bound(self) -> None:
        """Remember the socket file the bind made (only that one is removed at the end)."""
        try:
            self._inode = os.stat(self.path).st_ino
        except OSError:
            self._inode = None

    def release(self) -> None:
        """Remove our socket file (if it is still ours), then let the path go. Idempotent."""
        if self._fd < 0:
            return
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        fd, self._fd = self._fd, -1
        os.close(fd)  # drops the flock (the .lock file stays: unlinking it would race a waiter)


def claim_ipc(endpoint: str) -> IpcClaim | None:
    """Claim an ``ipc://`` endpoint's path for this process (None for other transports).

    Raises EndpointBusy when another writer holds the claim, a process listens
    on the path, or the path is something other than a socket.
    """
    if not endpoint.startswith("ipc://"):
        return None
    path = endpoint[len("ipc://") :]
    if path == "*" or path.startswith("@"):
        # ZeroMQ picks a fresh path for "*"; an abstract name (@) has no file, and binding a busy one fails.
        return None
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise EndpointBusy(f"endpoint {endpoint} is claimed by another writer") from None
            raise
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return IpcClaim(path, fd)
        if not stat.S_ISSOCK(mode):
            raise EndpointBusy(f"endpoint {endpoint}: {path} exists and is not a socket; refusing to replace it")
        if ipc_in_use(endpoint):
            raise EndpointBusy(f"endpoint {endpoint} is in use by another process")
        return IpcClaim(path, fd)  # a socket file left by a dead process: ours to replace
    except BaseException:
        os.close(fd)
        raise
