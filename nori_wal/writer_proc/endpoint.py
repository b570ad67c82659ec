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
import tempfile
from dataclasses import dataclass

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


def write_endpoint_file(directory: str, endpoint: str, pid: int) -> None:
    """Record the serving endpoint in DIR/WRITER (tmp file + rename: readers never see half of it)."""
    path = os.path.join(directory, ENDPOINT_FILE)
    tmp = f"{path}.{pid}.tmp"
    with open(tmp, "w") as f:
        json.dump({"endpoint": endpoint, "pid": pid}, f)
    os.replace(tmp, path)


def read_endpoint_file(directory: str | os.PathLike[str]) -> EndpointRecord | None:
    """The endpoint a writer recorded in ``directory``, or None if there is none (or it is unreadable)."""
    try:
        with open(os.path.join(os.fspath(directory), ENDPOINT_FILE)) as f:
            data = json.load(f)
        return EndpointRecord(str(data["endpoint"]), int(data["pid"]))
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
    rec = read_endpoint_file(directory)
    return rec.endpoint if rec is not None else default_endpoint(directory)
