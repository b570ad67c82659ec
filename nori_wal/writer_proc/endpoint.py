"""Claiming an ipc:// socket path before the writer binds it.

An ipc:// path is claimed before it is bound (``claim_ipc``): an flock on
``PATH.lock``, held for the writer's life. ZeroMQ's bind silently replaces
whatever is at the path, so two writers (of two directories) starting at once
on one explicit endpoint would otherwise both serve, and a client of one
would be acknowledged into the other's log. A path that exists and is not a
socket is never replaced. (Where a directory's writer listens, and DIR/WRITER,
are ``nori_wal.endpoint_file``'s: clients read them too.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat

from ..fs import open_private, secure_dir


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


def private_runtime_dir(path: str, group: str | None) -> None:
    """Make ``path`` (a runtime endpoint's directory, in a shared temp dir) this user's: 0700, or 0750
    to ``group``. One that exists and is not a directory of this user (a symlink, another user's
    directory planted in /tmp) is never used: EndpointBusy."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise EndpointBusy(
                f"{path} is not a directory of this user; refusing to put the writer's socket in it"
            ) from None
    secure_dir(path, group)


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
    fd = open_private(path + ".lock", os.O_RDWR)
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
