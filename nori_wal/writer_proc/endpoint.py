"""Where a directory's writer listens: the default ipc:// endpoint and the DIR/WRITER file.

The default endpoint is a function of the directory alone, so a client can be
created (``WalClient.for_dir``) before the writer starts: ``DIR/writer.sock``
when that path fits in a Unix socket address (108 bytes on Linux), else a
socket in ``$XDG_RUNTIME_DIR`` (or the temp dir) named after a hash of the
directory's real path. A running writer also records its endpoint and pid in
``DIR/WRITER`` (JSON, replaced atomically), which is what ``for_dir`` reads
first: it covers ``--endpoint tcp://...`` and ephemeral ports.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass

from ..fs import writer_lock_held

ENDPOINT_FILE = "WRITER"
SOCKET_NAME = "writer.sock"
_MAX_IPC_PATH = 100          # bytes; sun_path holds 108 with its NUL, keep a margin


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
    pid_ns: int | None = None       # the writer's PID namespace: its pid means nothing from another one


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
    """The endpoint a client should use for ``directory``: the recorded one, else the default.

    A record left by a killed writer is ignored (its pid is gone, or nobody holds
    the directory's lock): its tcp port may since belong to another directory's
    writer, which would acknowledge appends into the wrong log. Only judged from
    the writer's own PID namespace (a client in another container cannot see its
    pid or its lock in /proc), else the record is trusted.
    """
    rec = read_endpoint_file(directory)
    if rec is None:
        return default_endpoint(directory)
    if rec.pid_ns is not None and rec.pid_ns == _pid_ns() and (
            not _pid_alive(rec.pid) or writer_lock_held(os.fspath(directory)) is False):
        return default_endpoint(directory)
    return rec.endpoint


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:         # alive, another user's
        return True
    except (OverflowError, ValueError):
        return False
    return True


def ipc_in_use(endpoint: str) -> bool:
    """Whether a process listens on the ``ipc://`` ``endpoint`` now (ZeroMQ would silently take it over)."""
    if not endpoint.startswith("ipc://"):
        return False
    path = endpoint[len("ipc://"):]
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:             # refused: a socket file left by a dead process
            return False
    return True
