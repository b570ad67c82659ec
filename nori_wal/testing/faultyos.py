"""FaultyOsLayer: the real file system with FaultFS's fault rules, picklable for a writer process.

``WriterProcess.spawn(config, layer=FaultyOsLayer([...]))`` runs a real writer
on real files whose n-th fsync fails with EIO, whose write hits ENOSPC after a
partial write, or which SIGKILLs itself at a named syscall (``CRASH``): crash
points in the code path, armed only by the test (etcd's ``walBeforeSync``).
The rules travel with the layer when it is pickled; their counters then count
the calls in the process that uses it.

Its files offer what ``OsFile`` offers, so the log takes the path it takes in
production: ``preallocate`` (durable zeros ahead of the write point, under
Always and Batch) is one rule-checked call, "preallocate" (the zeros and their
fdatasync; ``partial``: zeros written before the error, as a full disk does);
``start_writeback`` (Os) is checked as "start_writeback" for ``CRASH`` rules, and
an error rule drops that advice silently, as the real call ignores its errors.
"""

from __future__ import annotations

import errno as errno_mod
import os
import signal
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

from ..fs import OsDirLock, OsFile, OsFileLayer
from ..record import BytesLike
from .faultfs import CRASH, Fault


class FaultyOsLayer(OsFileLayer):
    """OsFileLayer whose calls can fail on command (see ``FaultFS.inject`` for the rules)."""

    def __init__(self, faults: Iterable[Fault] = ()):
        self.faults = list(faults)
        self.syscalls = 0

    def inject(
        self,
        op: str,
        errno: int = errno_mod.EIO,
        *,
        nth: int = 1,
        times: int | None = 1,
        path: str | None = None,
        partial: int | None = None,
    ) -> Fault:
        fault = Fault(op, errno, nth, times, path, partial)
        self.faults.append(fault)
        return fault

    def check(self, op: str, path: str) -> Fault | None:
        """Count one call; SIGKILL this process for a CRASH rule; the firing error rule, if any."""
        self.syscalls += 1
        for fault in self.faults:
            if fault.matches(op, path) and fault.trigger():
                if fault.errno == CRASH:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fault
        return None

    def _simple(self, op: str, path: str) -> None:
        fault = self.check(op, path)
        if fault is not None:
            raise OSError(fault.errno, os.strerror(fault.errno), path)

    def makedirs(self, path: str) -> None:
        self._simple("makedirs", path)
        super().makedirs(path)

    def listdir(self, path: str) -> list[str]:
        self._simple("listdir", path)
        return super().listdir(path)

    def create(self, path: str) -> FaultyOsFile:  # type: ignore[override]
        self._simple("create", path)
        return FaultyOsFile(super().create(path), self)

    def open_append(self, path: str) -> FaultyOsFile:  # type: ignore[override]
        self._simple("open_append", path)
        return FaultyOsFile(super().open_append(path), self)

    def open_read(self, path: str) -> FaultyOsFile:  # type: ignore[override]
        self._simple("open_read", path)
        return FaultyOsFile(super().open_read(path), self)

    def rename(self, src: str, dst: str) -> None:
        self._simple("rename", src)
        super().rename(src, dst)

    def unlink(self, path: str) -> None:
        self._simple("unlink", path)
        super().unlink(path)

    def sync_dir(self, path: str) -> None:
        self._simple("sync_dir", path)
        super().sync_dir(path)

    def lock_dir(self, path: str) -> OsDirLock:
        self._simple("lock_dir", path)
        return super().lock_dir(path)


class FaultyOsFile:
    """An OsFile whose calls go through its layer's fault rules."""

    def __init__(self, inner: OsFile, layer: FaultyOsLayer):
        self._inner, self._layer, self.path = inner, layer, inner.path

    def append(self, data: BytesLike) -> None:
        fault = self._layer.check("append", self.path)
        if fault is None:
            self._inner.append(data)
            return
        if fault.partial:
            self._inner.append(memoryview(data)[: fault.partial])
        raise OSError(fault.errno, os.strerror(fault.errno), self.path)

    def preallocate(self, upto: int) -> None:
        """``OsFile.preallocate``: durable zeros up to ``upto`` bytes; a "preallocate" rule fails it."""
        fault = self._layer.check("preallocate", self.path)
        if fault is None:
            self._inner.preallocate(upto)
            return
        if fault.partial:
            size = os.fstat(self._inner.fd).st_size
            zeros = min(fault.partial, max(0, upto - size))
            if zeros:
                os.pwrite(self._inner.fd, bytes(zeros), size)
        raise OSError(fault.errno, os.strerror(fault.errno), self.path)

    def start_writeback(self, offset: int, nbytes: int) -> None:
        """``OsFile.start_writeback`` (a hint): a "start_writeback" error rule drops it, as the OS may."""
        if self._layer.check("start_writeback", self.path) is None:
            self._inner.start_writeback(offset, nbytes)

    def sync(self) -> None:
        self._layer._simple("sync", self.path)
        self._inner.sync()

    def truncate(self, size: int) -> None:
        self._layer._simple("truncate", self.path)
        self._inner.truncate(size)

    def pread(self, size: int, offset: int) -> bytes:
        self._layer._simple("pread", self.path)
        return self._inner.pread(size, offset)

    def size(self) -> int:
        self._layer._simple("size", self.path)
        return self._inner.size()

    def map(self) -> AbstractContextManager[Any]:
        self._layer._simple("map", self.path)
        return self._inner.map()

    def close(self) -> None:
        self._inner.close()


__all__ = ["FaultyOsFile", "FaultyOsLayer"]
