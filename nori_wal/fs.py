"""FileLayer: the one seam through which all segment I/O goes, and its OS implementation.

Only this module (and the fault-injecting layer in ``nori_wal.testing``, which
implements the same protocol) writes, fsyncs, truncates or unlinks. Every
failure surfaces as OSError with the errno the OS gave; callers map it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import mmap
import os
import stat
import weakref
from typing import Any, Iterable, Iterator, Protocol

from .errors import WalIOError, WalLockedError
from .record import BytesLike


class FileHandle(Protocol):
    """An open segment file."""

    def append(self, data: BytesLike) -> None:
        """Write all of ``data`` at the end of the file (raises OSError, possibly after a partial write)."""

    def sync(self) -> None:
        """fdatasync: make the file's written bytes durable."""

    def truncate(self, size: int) -> None: ...
    def pread(self, size: int, offset: int) -> bytes: ...
    def size(self) -> int: ...
    def close(self) -> None: ...

    # Optional: ``map()``, a context manager giving a read-only memoryview of the whole
    # file (zero copy); layers without it are read with pread. ``preallocate(upto)``:
    # durable zeros past the write point (faster fdatasync); layers without it don't.


class DirLock(Protocol):
    def release(self) -> None: ...


class FileLayer(Protocol):
    """Directory-level operations plus opening files."""

    def makedirs(self, path: str) -> None:
        """``mkdir -p``; like a new file's, a new directory's entry is durable once its parent is ``sync_dir``-ed."""

    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def create(self, path: str) -> FileHandle:
        """Create a new file (fails if it exists) opened for appending."""

    def open_append(self, path: str) -> FileHandle: ...
    def open_read(self, path: str) -> FileHandle: ...
    def rename(self, src: str, dst: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def sync_dir(self, path: str) -> None:
        """fsync a directory so created, renamed and deleted entries are durable."""

    def lock_dir(self, path: str) -> DirLock:
        """Take the directory's exclusive writer lock at once or raise WalLockedError."""


_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    """libc's sync_file_range (Linux), or None: Python's os module does not offer it."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def _pwrite_all(fd: int, data: BytesLike, offset: int) -> int:
    """Write all of ``data`` at ``offset`` (pwrite may write less); the offset after it."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        offset += written
        view = view[written:]
    return offset


# -- permissions: one rule for every file and directory nori-wal creates ----------------------

OWNER_DIR_MODE = 0o700  # the log directory, by default: nobody else may even list it
GROUP_DIR_MODE = 0o2750  # with WalConfig.group: the group reads; setgid, so new files get the group


def modes_under(dir_mode: int) -> tuple[int, int, int]:
    """(sub-directory, file, socket) modes for what is created in a directory of mode ``dir_mode``.

    Owner-only unless the directory lets its group in (``GROUP_DIR_MODE``): then
    the group may read files, and connect to (write) the socket. Whatever the umask.
    """
    if dir_mode & 0o050 == 0o050:
        return GROUP_DIR_MODE, 0o640, 0o660
    return OWNER_DIR_MODE, 0o600, 0o600


def _modes_in(directory: str) -> tuple[int, int, int]:
    try:
        return modes_under(os.stat(directory or os.curdir).st_mode)
    except OSError:
        return OWNER_DIR_MODE, 0o600, 0o600


def open_private(path: str, flags: int) -> int:
    """``os.open(path, flags | O_CREAT)`` with the mode its directory calls for (``modes_under``), umask or not."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = _modes_in(os.path.dirname(path))[1]
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def chmod_socket(path: str) -> None:
    """Give a freshly bound unix socket file its mode (``modes_under`` its directory); best effort."""
    try:
        os.chmod(path, _modes_in(os.path.dirname(path))[2])
    except OSError:
        pass


def group_id(name: str) -> int:
    """The gid of group ``name``; ValueError naming it when there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"no such group: {name!r}") from None


def secure_dir(path: str, group: str | None) -> None:
    """Give the log directory (and its LOCK) the mode of ``group`` (owner-only when None).

    Called by the directory's writer once it holds the lock. A directory owned by
    someone else is left as it is (chmod is theirs to do).
    """
    st = os.stat(path)
    if st.st_uid != os.geteuid():
        return
    if group is not None:
        gid = group_id(group)
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        wanted = GROUP_DIR_MODE
    else:
        wanted = OWNER_DIR_MODE
    if stat.S_IMODE(st.st_mode) != wanted:
        os.chmod(path, wanted)
    lock = os.path.join(path, LOCK_FILE)
    try:
        if group is not None:
            os.chown(lock, -1, group_id(group))
        os.chmod(lock, modes_under(wanted)[1])
    except FileNotFoundError:
        pass


class OsFile:
    """A real file descriptor, writing at its own offset (``pos``: the end of the records)."""

    __slots__ = ("fd", "path", "pos")

    def __init__(self, fd: int, path: str, pos: int = 0):
        self.fd, self.path, self.pos = fd, path, pos

    def append(self, data: BytesLike) -> None:
        """Write all of ``data`` at ``pos``: after the last record, over any preallocated zeros."""
        self.pos = _pwrite_all(self.fd, data, self.pos)

    def preallocate(self, upto: int) -> None:
        """Extend the file with durable zeros up to ``upto`` bytes, past the write point.

        Overwriting zeros that are already durable lets fdatasync skip the file-size
        update (an ext4 journal commit): 1.6-2.4x more fdatasyncs/s on this machine's
        disk. PostgreSQL zero-fills its WAL segments for the same reason.
        """
        size = os.fstat(self.fd).st_size
        if upto > size:
            _pwrite_all(self.fd, bytes(upto - size), size)
            os.fdatasync(self.fd)

    def start_writeback(self, offset: int, nbytes: int) -> None:
        """Ask the kernel to start writing these bytes to disk now, without waiting for it.

        ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, as RocksDB's ``bytes_per_sync``:
        a hint, not a durability point (no fsync, nothing waits); a no-op where the
        call does not exist. It keeps the dirty data of a segment small, so the fsync
        that seals it finds little left to write.
        """
        if _sync_file_range is not None:
            _sync_file_range(self.fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # advice: errors ignored

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.pos = min(self.pos, size)

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    @contextlib.contextmanager
    def map(self) -> Iterator[memoryview]:
        """A read-only view of the whole file without copying it (recovery scans use it).

        Only for files nobody truncates meanwhile (the caller holds the writer lock):
        touching a mapped page past a new end would raise SIGBUS.
        """
        size = self.size()
        if size == 0:
            yield memoryview(b"")
            return
        m = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0), prot=mmap.PROT_READ)
        view = memoryview(m)
        try:
            yield view
        finally:
            view.release()
            try:
                m.close()
            except BufferError:  # a caller kept a slice; the mapping goes with it
                pass

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class OsDirLock:
    """An exclusive flock on DIR/LOCK, held while the file stays open.

    A flock belongs to the open file description, which a forked child shares:
    ``release`` unlocks explicitly (closing our descriptor would leave the lock to
    a child that still has its copy), and a forked child closes its copy at once
    (``_disown_in_child``), so a writer killed while its children live does not
    leave its directory locked.
    """

    def __init__(self, fd: int):
        self._fd = fd
        _LOCKS.add(self)

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def forget(self) -> None:
        """In a forked child: close this process's copy of the descriptor, leaving the lock to its owner."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


_LOCKS: weakref.WeakSet[OsDirLock] = weakref.WeakSet()


def _disown_in_child() -> None:
    for lock in list(_LOCKS):
        lock.forget()


os.register_at_fork(after_in_child=_disown_in_child)


LOCK_FILE = "LOCK"


class OsFileLayer:
    """The real file system."""

    def makedirs(self, path: str) -> None:
        """``mkdir -p``; a directory made here gets the mode ``modes_under`` its parent calls for."""
        existed = os.path.isdir(path)
        try:
            os.makedirs(path, mode=OWNER_DIR_MODE, exist_ok=True)
        except FileExistsError as exc:  # the name is taken by a file: say so, not "File exists"
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory (a file has that name)", path) from exc
        if not existed:
            parent = os.path.dirname(os.path.normpath(path))
            mode = _modes_in(parent)[0] if os.path.exists(os.path.join(parent, LOCK_FILE)) else OWNER_DIR_MODE
            os.chmod(path, mode)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def create(self, path: str) -> OsFile:
        return OsFile(open_private(path, os.O_WRONLY | os.O_EXCL), path)

    def open_append(self, path: str) -> OsFile:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        return OsFile(fd, path, os.fstat(fd).st_size)

    def open_read(self, path: str) -> OsFile:
        return OsFile(os.open(path, os.O_RDONLY | os.O_CLOEXEC), path)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock_dir(self, path: str) -> OsDirLock:
        # flock locks belong to the open file description, so a second open() in the
        # same process conflicts too: one writer per directory, also within a process.
        fd = open_private(os.path.join(path, LOCK_FILE), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WalLockedError(f"{path} is locked by another writer (embedded Wal or writer process)") from exc
            raise
        return OsDirLock(fd)

    def lock_file(self, path: str) -> OsDirLock:
        """Take an exclusive flock on the file ``path`` (created if missing) at once or raise WalLockedError.

        A consumer's cursor lock (``cursor_store``): one process holds a cursor at a time.
        """
        fd = open_private(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WalLockedError(f"{path} is locked by another process") from exc
            raise
        return OsDirLock(fd)


def writer_lock_held(path: str) -> bool | None:
    """Whether a live writer (process or embedded Wal) holds ``path``'s lock; None when it cannot tell.

    Read-only: looks the lock up in Linux's /proc/locks instead of trying to take
    it, so it never makes a starting writer fail. None on other systems or
    when the directory has no LOCK file.
    """
    holder = writer_lock_holder(path)
    return None if holder is None else holder != 0


def writer_lock_holder(path: str) -> int | None:
    """The pid holding ``path``'s lock (as /proc/locks names it), 0 when nobody does; None when it cannot tell."""
    try:
        st = os.stat(os.path.join(path, LOCK_FILE))
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        return None
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" (waiters carry a "->" field and hold nothing)
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE" and fields[5] == wanted:
            return int(fields[4]) if fields[4].isdigit() else None
    return 0


OS = OsFileLayer()


def replace_durably(layer: FileLayer, path: str, chunks: Iterable[BytesLike], tmp: str | None = None) -> None:
    """Put ``chunks`` at ``path`` so that a crash leaves the old file or the whole new one, never a part.

    Write a temporary file (``tmp``, by default ``path + ".tmp"``; one left by
    a crash is removed first), fsync it, rename it over ``path``, fsync the
    directory: the new bytes are durable before their name can point at them,
    and the name is durable before this returns. OSError propagates.
    """
    tmp = tmp or path + ".tmp"
    if layer.exists(tmp):
        layer.unlink(tmp)
    out = layer.create(tmp)
    try:
        for chunk in chunks:
            out.append(chunk)
        out.sync()
    finally:
        out.close()
    layer.rename(tmp, path)
    layer.sync_dir(os.path.dirname(path) or os.curdir)


def make_dirs_durable(layer: FileLayer, directory: str) -> None:
    """Create ``directory`` and its missing parents; make every entry on its path durable.

    A directory's entry lives in its parent and, like a new file's, is durable
    only once the parent is fsynced: else a power loss can take the log
    directory away, acknowledged records and all. Each open fsyncs the whole
    path, not just what it created: a predecessor killed between its mkdir and
    that fsync left entries in the page cache only (recovery's rule 5). A parent
    we may not read is skipped unless this open created the directory in it.
    """
    chain: list[tuple[str, str]] = []  # (directory, its parent), deepest first
    path = os.path.normpath(directory)
    while True:
        parent = os.path.dirname(path) or os.curdir
        if parent == path or os.path.basename(path) == os.pardir:
            break  # the root or the working directory (or above it)
        chain.append((path, parent))
        path = parent
    created = set()
    for d, _ in chain:
        if layer.exists(d):
            break
        created.add(d)
    layer.makedirs(directory)
    for d, parent in chain:
        try:
            layer.sync_dir(parent)
        except OSError as exc:
            if isinstance(exc, PermissionError) and d not in created:
                continue  # not readable, and not ours: we cannot, and added nothing to it
            raise WalIOError(
                f"making the directory entry of {d} durable failed (fsync of {parent}): {exc.strerror or exc}"
            ) from exc
