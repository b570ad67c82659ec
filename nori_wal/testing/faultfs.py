"""FaultFS: an in-memory FileLayer that knows what is durable, and loses the rest on command.

The segment code does all its I/O through ``nori_wal.fs.FileLayer``; pass a
``FaultFS`` as ``layer=`` to ``Wal.open`` / ``SegmentLog.open`` and the
production code runs unchanged on top of it. The layer models what LazyFS,
ALICE and CrashMonkey model:

* Per file: the bytes reads see now (the page cache), the bytes on "disk"
  (as of the last successful ``sync``) and the writes and truncates issued
  since, in order. ``crash()`` keeps only what was synced; a ``CrashSpec``
  can keep a prefix of the unsynced operations, tear the next write at any
  byte (or 512-byte sector), and make the rest read as zeros (ext4 after a
  power loss: the size reached the disk, the data did not; etcd #11488).
* Per directory: the entries visible now and the entries made durable by the
  last ``sync_dir``. A file created but whose directory was not fsynced
  disappears at a crash; a rename or unlink not followed by ``sync_dir``
  reverts (etcd #6368, KAFKA-3968); a directory made by ``makedirs`` vanishes,
  with everything in it, until its parent is fsynced. A ``CrashSpec`` can keep
  a prefix of the pending directory operations (journalled file systems commit
  them in order), and can drop unsynced writes while later ones land
  (write-back out of order).
* Faults: ``inject("sync", errno.EIO)`` fails an fsync (and, like Linux after
  fsyncgate, drops the dirty data so a retry "succeeds" without it);
  ``inject("append", errno.ENOSPC, partial=n)`` writes ``n`` bytes, then fails;
  ``crash_after(k)`` / ``inject(op, CRASH)`` make syscall k+1 (or the named
  operation) raise ``SimulatedCrash`` and every call after it too: the process
  is dead, and the test picks what the disk holds with ``crash()`` or
  ``process_crash()``.
* A syscall counter, a trace and an observer hook (called after every
  operation) so a test can snapshot the state at every syscall boundary.
* Preallocation (opt-in: ``FaultFS(preallocate=True)`` or ``PreallocFaultFS``):
  handles get ``OsFile.preallocate(upto)``, so ``SegmentLog`` keeps durable
  zeros ahead of its write point as it does on the OS layer. Modelled as
  ``OsFile`` does it: a write of zeros past the end (the "preallocate"
  syscall), then an fdatasync ("sync"). Records then overwrite durable zeros,
  and a crash can lose, keep or tear those overwrites like any other unsynced
  write (lost bytes read back as the zeros).

Every handle writes at its own position (``pos``), as ``OsFile`` does: after
the last byte it wrote (``create``: 0; ``open_append``: the size), over any
zeros preallocated past it, not at the end of the file; ``truncate`` pulls it
back to the new size when that is shorter. A failed write still moves it past
the bytes that landed (``OsFile`` keeps the old position; ``SegmentLog`` cuts
the file back to its end after a failed write either way).

Simplifications, on purpose: the root (``/`` or ``.``) and the directories of
``from_files`` are durable at once; ``lock_dir`` keeps its lock in memory (no
LOCK file); a ``sync`` (fdatasync) makes the file's size durable with its data
but not its directory entry. Everything is guarded by one lock, so threads may share it.

The model this layer applies (``CrashSpec``, ``Fault``, ``Syscall``, what a
crash keeps of one file, the tear points) is in ``crashmodel``, as values and
pure functions; its names are importable from here too.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import threading
from collections.abc import Iterator
from typing import Callable

from ..errors import WalLockedError
from ..record import BytesLike
from .crashmodel import (
    CRASH,
    MUTATING_OPS,
    POWER_LOSS,
    PROCESS_CRASH,
    SECTOR_SIZE,
    CrashSpec,
    DirOp,
    Fault,
    FileOp,
    Inode,
    SimulatedCrash,
    Syscall,
    apply_op,
    crashed_content,
    sector_tears,
    torn_write_points,
)

Observer = Callable[["FaultFS", Syscall], None]


def _norm(path: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.fspath(path))


def _oserror(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)  # OSError(ENOENT, ...) is a FileNotFoundError


class FaultFS:
    """An in-memory FileLayer with durable/unsynced bookkeeping, fault injection and crashes.

    ``preallocate``: open handles offer ``preallocate(upto)`` (see the module
    docstring); default: the class's ``preallocating``. Layers made by
    ``snapshot`` and ``crash`` keep the setting.
    """

    preallocating = False

    def __init__(self, *, preallocate: bool | None = None) -> None:
        if preallocate is not None:
            self.preallocating = preallocate
        self._lock = threading.RLock()
        self._dirs: dict[str, dict[str, Inode]] = {}  # visible entries
        self._durable_dirs: dict[str, dict[str, Inode]] = {}  # entries as of the last sync_dir
        self._dir_pending: list[tuple[str, DirOp]] = []  # directory ops since, in order
        self._locks: set[str] = set()
        self._faults: list[Fault] = []
        self._observers: list[Observer] = []
        self._last_written: Inode | None = None
        self._dead = False
        self.syscalls = 0
        self.trace: list[Syscall] | None = None
        self.largest_read = 0  # the most bytes any one pread asked for (a length taken on trust shows here)

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> FaultFS:
        """A layer whose disk holds ``files`` (path -> bytes), all durable."""
        fs = cls()
        for path, data in files.items():
            path = _norm(path)
            fs._mkdirs(os.path.dirname(path))
            ino = Inode(data, bytes(data))
            fs._dirs[os.path.dirname(path)][os.path.basename(path)] = ino
            fs._durable_dirs[os.path.dirname(path)][os.path.basename(path)] = ino
        return fs

    def _mkdirs(self, path: str) -> None:
        for p in reversed(self._missing_dirs(path)):
            self._dirs[p] = {}
            self._durable_dirs[p] = {}

    def _missing_dirs(self, path: str) -> list[str]:
        """``path`` and its ancestors up to the first that exists (or the root), deepest first."""
        missing: list[str] = []
        while path not in self._dirs:
            missing.append(path)
            parent = _norm(os.path.dirname(path))
            if parent == path:
                break
            path = parent
        return missing

    # -- faults, crashes and observation --------------------------------------------------

    def inject(
        self,
        op: str,
        errno: int = errno_mod.EIO,
        *,
        nth: int = 1,
        times: int | None = 1,
        path: str | None = None,
        partial: int | None = None,
        drop_unsynced: bool = True,
    ) -> Fault:
        """Arm a fault: the ``nth`` next call of ``op`` fails with ``errno`` (see Fault)."""
        fault = Fault(op, errno, nth, times, path, partial, drop_unsynced)
        with self._lock:
            self._faults.append(fault)
        return fault

    def crash_after(self, k: int) -> Fault:
        """Syscall number ``k + 1`` (counting from the start) and all later ones raise SimulatedCrash."""
        with self._lock:
            return self.inject("*", CRASH, nth=k + 1 - self.syscalls, times=None)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def observe(self, callback: Observer) -> None:
        """Call ``callback(fs, syscall)`` after every completed operation (under the layer's lock)."""
        with self._lock:
            self._observers.append(callback)

    def held(self) -> threading.RLock:
        """The layer's lock, as a context manager: no other thread's syscall runs inside the block.

        Reentrant. ``crashsim`` holds it while it records an acknowledgement and
        snapshots the layer, so the snapshot is the disk at the instant of the ack.
        """
        return self._lock

    def start_trace(self) -> list[Syscall]:
        with self._lock:
            self.trace = []
            return self.trace

    @property
    def dead(self) -> bool:
        """Whether a SimulatedCrash fired: the simulated process is gone."""
        return self._dead

    def _enter(self, op: str, path: str) -> Fault | None:
        """Count a syscall and check the armed faults; returns a firing non-crash fault."""
        if self._dead:
            raise SimulatedCrash(f"{op} {path}: the process already crashed")
        self.syscalls += 1
        for fault in self._faults:
            if fault.matches(op, path) and fault.trigger():
                if fault.errno == CRASH:
                    self._dead = True
                    raise SimulatedCrash(f"crash at syscall {self.syscalls}: {op} {path}")
                return fault
        return None

    def _done(self, op: str, path: str, nbytes: int = 0) -> None:
        if self.trace is not None or self._observers:
            call = Syscall(self.syscalls, op, path, nbytes)
            if self.trace is not None:
                self.trace.append(call)
            for cb in self._observers:
                cb(self, call)

    def _fail_simple(self, op: str, path: str) -> None:
        fault = self._enter(op, path)
        if fault is not None:
            raise _oserror(fault.errno, path)

    # -- state ----------------------------------------------------------------------------

    def _lookup(self, path: str) -> tuple[str, str, dict[str, Inode]]:
        d, name = os.path.split(path)
        entries = self._dirs.get(d)
        if entries is None:
            raise _oserror(errno_mod.ENOENT, path)
        return d, name, entries

    def files(self) -> dict[str, bytes]:
        """Every visible file's path and content (what a reader would see now)."""
        with self._lock:
            return {os.path.join(d, n): bytes(ino.data) for d, ents in self._dirs.items() for n, ino in ents.items()}

    def image(self) -> tuple[tuple[str, bytes], ...]:
        """A hashable picture of the visible files, for comparing states."""
        return tuple(sorted(self.files().items()))

    def pending_ops(self, path: str | None = None) -> list[FileOp]:
        """The unsynced operations of ``path`` (default: the file written last)."""
        with self._lock:
            ino = self._target(path)
            return list(ino.pending) if ino is not None else []

    def pending_dir_ops(self) -> list[tuple[str, DirOp]]:
        with self._lock:
            return list(self._dir_pending)

    def last_written_path(self) -> str | None:
        """The visible path of the file written last (None if it has no name any more)."""
        with self._lock:
            for d, ents in self._dirs.items():
                for n, ino in ents.items():
                    if ino is self._last_written:
                        return os.path.join(d, n)
            return None

    def _target(self, path: str | None) -> Inode | None:
        if path is None:
            return self._last_written
        d, name = os.path.split(_norm(path))
        return self._dirs.get(d, {}).get(name)

    def snapshot(self) -> FaultFS:
        """An independent copy of the whole state (unsynced data included); no faults, locks or observers."""
        with self._lock:
            memo: dict[int, Inode] = {}

            def cp(ino: Inode) -> Inode:
                new = memo.get(id(ino))
                if new is None:
                    new = memo[id(ino)] = Inode(ino.data, ino.durable, list(ino.pending))
                return new

            fs = self._new_layer()
            fs._dirs = {d: {n: cp(i) for n, i in e.items()} for d, e in self._dirs.items()}
            fs._durable_dirs = {d: {n: cp(i) for n, i in e.items()} for d, e in self._durable_dirs.items()}
            fs._dir_pending = [(d, op if op[0] != "link" else (op[0], op[1], cp(op[2]))) for d, op in self._dir_pending]
            if self._last_written is not None:
                fs._last_written = cp(self._last_written)
            return fs

    def _new_layer(self) -> FaultFS:
        fs = type(self)()  # a subclass (a disk with other habits) stays itself
        fs.preallocating = self.preallocating
        return fs

    def crash(self, spec: CrashSpec = POWER_LOSS) -> FaultFS:
        """A new layer holding what the disk holds after a crash described by ``spec``.

        This layer is left as it was (so one state can be crashed many ways).
        """
        if spec.page_cache:
            return self._killed(spec)
        with self._lock:
            dirs = {d: dict(e) for d, e in self._durable_dirs.items()}
            dir_ops = self._dir_pending if spec.keep_dir_ops is None else self._dir_pending[: spec.keep_dir_ops]
            for d, op in dir_ops:
                if op[0] == "link":
                    dirs.setdefault(d, {})[op[1]] = op[2]
                elif op[0] == "unlink":
                    dirs.setdefault(d, {}).pop(op[1], None)
            for d, op in self._dir_pending[len(dir_ops) :]:
                if op[0] == "mkdir":  # its entry was lost: the directory and all below it
                    gone = _norm(os.path.join(d, op[1]))
                    for sub in [s for s in dirs if s == gone or s.startswith(gone + os.sep)]:
                        del dirs[sub]
            target = self._target(spec.file)
            memo: dict[int, Inode] = {}
            fs = self._new_layer()
            for d, ents in dirs.items():
                fs._dirs[d] = {}
                fs._durable_dirs[d] = {}
                for name, ino in ents.items():
                    new = memo.get(id(ino))
                    if new is None:
                        content = crashed_content(ino, spec, ino is target)
                        new = memo[id(ino)] = Inode(content, content)
                    fs._dirs[d][name] = new
                    fs._durable_dirs[d][name] = new
            return fs

    def _killed(self, spec: CrashSpec) -> FaultFS:
        """``crash`` of the process alone: the page cache outlives it, so nothing becomes durable here.

        The target's unsynced operations after ``keep_ops`` never reached the
        kernel, except ``torn`` bytes of the first (a write cut short by SIGKILL).
        """
        fs = self.snapshot()
        target = fs._target(spec.file)
        if target is not None and spec.keep_ops is not None:
            kept = target.pending[: spec.keep_ops]
            rest = target.pending[spec.keep_ops :]
            if rest and spec.torn and rest[0][0] == "w":
                _, off, data = rest[0]  # type: ignore[misc]
                kept.append(("w", off, data[: spec.torn]))
            content = bytearray(target.durable)
            for op in kept:
                apply_op(content, op)
            target.data, target.pending = content, kept
        return fs

    def process_crash(self) -> FaultFS:
        """A new layer holding everything written so far (the kernel survived the process)."""
        return self.crash(PROCESS_CRASH)

    # -- FileLayer ------------------------------------------------------------------------

    def makedirs(self, path: str) -> None:
        """``mkdir -p``: each new directory's entry in its parent is pending until that parent's ``sync_dir``."""
        path = _norm(path)
        with self._lock:
            self._fail_simple("makedirs", path)
            missing = self._missing_dirs(path)
            for p in missing:
                if self._is_file(p):
                    raise _oserror(errno_mod.EEXIST if p == path else errno_mod.ENOTDIR, path)
            for p in reversed(missing):
                self._dirs[p] = {}
                self._durable_dirs[p] = {}  # what it holds; whether it exists is up to its parent
                parent = _norm(os.path.dirname(p))
                if parent != p:  # the root always exists
                    self._dir_pending.append((parent, ("mkdir", os.path.basename(p))))
            self._done("makedirs", path)

    def _is_file(self, path: str) -> bool:
        d, name = os.path.split(path)
        return name in self._dirs.get(d, {})

    def listdir(self, path: str) -> list[str]:
        path = _norm(path)
        with self._lock:
            self._fail_simple("listdir", path)
            entries = self._dirs.get(path)
            if entries is None:
                raise _oserror(errno_mod.ENOTDIR if self._is_file(path) else errno_mod.ENOENT, path)
            subdirs = [os.path.basename(d) for d in self._dirs if d != path and os.path.dirname(d) == path]
            self._done("listdir", path)
            return list(entries) + subdirs

    def exists(self, path: str) -> bool:
        path = _norm(path)
        with self._lock:
            self._fail_simple("exists", path)
            found = path in self._dirs or self._is_file(path)
            self._done("exists", path)
            return found

    def create(self, path: str) -> FaultFile:
        path = _norm(path)
        with self._lock:
            self._fail_simple("create", path)
            d, name, entries = self._lookup(path)
            if name in entries or path in self._dirs:
                raise _oserror(errno_mod.EEXIST, path)
            ino = Inode()
            entries[name] = ino
            self._dir_pending.append((d, ("link", name, ino)))
            self._done("create", path)
            return self._handle(ino, path, writable=True, readable=False)  # O_WRONLY, like OsFileLayer

    def _open(self, op: str, path: str, writable: bool) -> FaultFile:
        path = _norm(path)
        with self._lock:
            self._fail_simple(op, path)
            _d, name, entries = self._lookup(path)
            ino = entries.get(name)
            if ino is None:
                raise _oserror(errno_mod.EISDIR if path in self._dirs else errno_mod.ENOENT, path)
            self._done(op, path)
            return self._handle(ino, path, writable, pos=len(ino.data) if writable else 0)

    def _handle(self, ino: Inode, path: str, writable: bool, readable: bool = True, pos: int = 0) -> FaultFile:
        cls = PreallocFaultFile if self.preallocating else FaultFile
        return cls(self, ino, path, writable, readable, pos)

    def open_append(self, path: str) -> FaultFile:
        return self._open("open_append", path, True)

    def open_read(self, path: str) -> FaultFile:
        return self._open("open_read", path, False)

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        with self._lock:
            self._fail_simple("rename", src)
            sd, sname, sents = self._lookup(src)
            dd, dname, dents = self._lookup(dst)
            ino = sents.get(sname)
            if ino is None:
                raise _oserror(errno_mod.ENOENT, src)
            del sents[sname]
            dents[dname] = ino
            # Journalled in order; on one directory a prefix keeps either the old or the new name
            # (both ops land in one transaction on real file systems, we also allow the split).
            self._dir_pending.append((dd, ("link", dname, ino)))
            self._dir_pending.append((sd, ("unlink", sname)))
            self._done("rename", src)

    def unlink(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            self._fail_simple("unlink", path)
            d, name, entries = self._lookup(path)
            if name not in entries:
                raise _oserror(errno_mod.EISDIR if path in self._dirs else errno_mod.ENOENT, path)
            del entries[name]
            self._dir_pending.append((d, ("unlink", name)))
            self._done("unlink", path)

    def sync_dir(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            self._fail_simple("sync_dir", path)
            if path not in self._dirs:
                raise _oserror(errno_mod.ENOENT, path)
            self._durable_dirs[path] = dict(self._dirs[path])
            self._dir_pending = [(d, op) for d, op in self._dir_pending if d != path]
            self._done("sync_dir", path)

    def lock_dir(self, path: str) -> FaultLock:
        path = _norm(path)
        with self._lock:
            self._fail_simple("lock_dir", path)
            if path not in self._dirs:
                raise _oserror(errno_mod.ENOENT, path)
            if path in self._locks:
                raise WalLockedError(f"{path} is locked by another writer (embedded Wal or writer process)")
            self._locks.add(path)
            self._done("lock_dir", path)
            return FaultLock(self, path)

    def lock_file(self, path: str) -> FaultLock:
        """An exclusive in-memory lock named by a file path (its directory must exist; no file is made)."""
        path = _norm(path)
        with self._lock:
            self._fail_simple("lock_file", path)
            if _norm(os.path.dirname(path)) not in self._dirs:
                raise _oserror(errno_mod.ENOENT, path)
            if path in self._locks:
                raise WalLockedError(f"{path} is locked by another process")
            self._locks.add(path)
            self._done("lock_file", path)
            return FaultLock(self, path)

    # -- file operations (called by FaultFile) --------------------------------------------

    def _append(self, f: FaultFile, data: BytesLike) -> None:
        with self._lock:
            fault = self._enter("append", f.path)
            payload = bytes(data)
            if fault is not None:
                payload = payload[: fault.partial or 0]
            if payload:
                op: FileOp = ("w", f.pos, payload)
                apply_op(f.ino.data, op)
                f.ino.pending.append(op)
                f.pos += len(payload)
                self._last_written = f.ino
            if fault is not None:
                raise _oserror(fault.errno, f.path)
            self._done("append", f.path, len(payload))

    def _sync(self, f: FaultFile) -> None:
        with self._lock:
            fault = self._enter("sync", f.path)
            if fault is not None:
                if fault.drop_unsynced:
                    f.ino.pending.clear()  # fsyncgate: the dirty pages are marked clean, never written
                raise _oserror(fault.errno, f.path)
            content = bytearray(f.ino.durable)
            for op in f.ino.pending:
                apply_op(content, op)
            f.ino.durable = bytes(content)
            f.ino.pending.clear()
            self._done("sync", f.path)

    def _truncate(self, f: FaultFile, size: int) -> None:
        with self._lock:
            fault = self._enter("truncate", f.path)
            if fault is not None:
                raise _oserror(fault.errno, f.path)
            op: FileOp = ("t", size)
            apply_op(f.ino.data, op)
            f.ino.pending.append(op)
            f.pos = min(f.pos, size)
            self._last_written = f.ino
            self._done("truncate", f.path)

    def _preallocate(self, f: FaultFile, upto: int) -> None:
        """``OsFile.preallocate``: write zeros from the end up to ``upto``, then fdatasync (a "sync")."""
        with self._lock:
            fault = self._enter("preallocate", f.path)
            size = len(f.ino.data)
            zeros = max(0, upto - size)
            if fault is not None:
                zeros = min(zeros, fault.partial or 0)
            if zeros:
                op: FileOp = ("w", size, bytes(zeros))
                apply_op(f.ino.data, op)
                f.ino.pending.append(op)
                self._last_written = f.ino
            if fault is not None:
                raise _oserror(fault.errno, f.path)
            self._done("preallocate", f.path, zeros)
            if zeros:
                self._sync(f)

    def _pread(self, f: FaultFile, size: int, offset: int) -> bytes:
        with self._lock:
            self._fail_simple("pread", f.path)
            self.largest_read = max(self.largest_read, size)
            out = bytes(f.ino.data[offset : offset + size])
            self._done("pread", f.path, len(out))
            return out

    def _size(self, f: FaultFile) -> int:
        with self._lock:
            self._fail_simple("size", f.path)
            n = len(f.ino.data)
            self._done("size", f.path)
            return n


class FaultFile:
    """An open file of a FaultFS (bound to the inode, so it survives unlink and rename).

    Modes follow OsFileLayer: ``create`` opens write-only, ``open_read`` read-only.
    """

    __slots__ = ("closed", "fs", "ino", "path", "pos", "readable", "writable")

    def __init__(self, fs: FaultFS, ino: Inode, path: str, writable: bool, readable: bool = True, pos: int = 0):
        self.fs, self.ino, self.path = fs, ino, path
        self.writable, self.readable, self.closed = writable, readable, False
        self.pos = pos  # where the next append writes (OsFile.pos)

    def _check(self, write: bool = False, read: bool = False) -> None:
        if self.closed or (write and not self.writable) or (read and not self.readable):
            raise _oserror(errno_mod.EBADF, self.path)

    def append(self, data: BytesLike) -> None:
        """Write all of ``data`` at ``pos`` (after the last byte written, over any preallocated zeros)."""
        self._check(True)
        self.fs._append(self, data)

    def sync(self) -> None:
        self._check()
        self.fs._sync(self)

    def truncate(self, size: int) -> None:
        self._check(True)
        self.fs._truncate(self, size)

    def pread(self, size: int, offset: int) -> bytes:
        self._check(read=True)
        return self.fs._pread(self, size, offset)

    def size(self) -> int:
        self._check()
        return self.fs._size(self)

    @contextlib.contextmanager
    def map(self) -> Iterator[memoryview]:
        """A read-only view of the whole file, as ``OsFile.map`` gives (recovery scans use it)."""
        self._check(read=True)
        with self.fs._lock:
            self.fs._fail_simple("map", self.path)
            data = bytes(self.ino.data)
            self.fs._done("map", self.path, len(data))
        view = memoryview(data)
        try:
            yield view
        finally:
            view.release()

    def close(self) -> None:
        self.closed = True  # never fails, never counted: it changes nothing on disk


class PreallocFaultFile(FaultFile):
    """A handle of a preallocating FaultFS: it has ``OsFile.preallocate``."""

    __slots__ = ()

    def preallocate(self, upto: int) -> None:
        """Extend the file with durable zeros up to ``upto`` bytes: write them past the end, then fdatasync."""
        self._check(True)
        self.fs._preallocate(self, upto)


class PreallocFaultFS(FaultFS):
    """``FaultFS(preallocate=True)`` as a class, for code that takes a layer type (``crashsim.run_workload``)."""

    preallocating = True


class FaultLock:
    """The in-memory directory lock of a FaultFS."""

    def __init__(self, fs: FaultFS, path: str):
        self._fs, self._path = fs, path

    def release(self) -> None:
        if self._path:
            with self._fs._lock:
                self._fs._locks.discard(self._path)
            self._path = ""


__all__ = [
    "CRASH",
    "MUTATING_OPS",
    "POWER_LOSS",
    "PROCESS_CRASH",
    "SECTOR_SIZE",
    "CrashSpec",
    "Fault",
    "FaultFS",
    "FaultFile",
    "FaultLock",
    "PreallocFaultFS",
    "PreallocFaultFile",
    "SimulatedCrash",
    "Syscall",
    "sector_tears",
    "torn_write_points",
]
