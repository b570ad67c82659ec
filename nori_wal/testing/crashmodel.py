"""What a crash leaves behind, as values and pure rules: the crash kit's model of a disk.

``FaultFS`` (faultfs.py) keeps, per file, an ``Inode``: the bytes reads see
now, the bytes on "disk" (as of the last sync) and the unsynced writes and
truncates in order; per directory, the visible and the durable entries and
the pending ``DirOp``s. A ``CrashSpec`` says what survives a crash beyond what
was synced (``crashed_content`` applies it to one file), a ``Fault`` what a
call fails with, a ``Syscall`` one traced call. ``sector_tears`` and
``torn_write_points`` pick the bytes a write can be torn at.
"""

from __future__ import annotations

import errno as errno_mod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Union

SECTOR_SIZE = 512

CRASH = -1
"""Use as the ``errno`` of ``inject`` to make that call raise ``SimulatedCrash``."""

MUTATING_OPS = frozenset(
    {"makedirs", "create", "append", "preallocate", "sync", "truncate", "rename", "unlink", "sync_dir"}
)
"""Operations that can change what a crash leaves behind (the rest only read)."""


class SimulatedCrash(BaseException):
    """The simulated process died at this syscall; every later call on the layer raises it too.

    A BaseException, so ``except Exception`` in the code under test cannot swallow it.
    """


# -- the model ------------------------------------------------------------------------------

WriteOp = tuple[str, int, bytes]  # ("w", offset, data)
TruncOp = tuple[str, int]  # ("t", size)
FileOp = Union[WriteOp, TruncOp]


class Inode:
    """One file: what reads see now, what a power loss keeps, and the writes and truncates in between."""

    __slots__ = ("data", "durable", "pending")

    def __init__(self, data: bytes | bytearray = b"", durable: bytes = b"", pending: list[FileOp] | None = None):
        self.data = bytearray(data)  # what reads see now
        self.durable = durable  # what survives a power loss
        self.pending: list[FileOp] = pending if pending is not None else []


def apply_op(content: bytearray, op: FileOp) -> None:
    """Apply one write or truncate to ``content`` (a write past the end fills the gap with zeros)."""
    if op[0] == "w":
        _, off, data = op  # type: ignore[misc]
        if off > len(content):
            content.extend(bytes(off - len(content)))
        content[off : off + len(data)] = data
    else:
        size = op[1]
        if size < len(content):
            del content[size:]
        else:
            content.extend(bytes(size - len(content)))


DirOp = tuple[Any, ...]  # ("link", name, inode) | ("unlink", name) | ("mkdir", name)


@dataclass(frozen=True)
class CrashSpec:
    """What survives a crash, beyond what was synced.

    ``keep_ops``: how many of the target file's unsynced operations reach the
    disk whole, in order (None: all of them). ``torn``: how many bytes of the
    next one (a write) reach it too. ``zero_fill``: the rest of that write and
    every later write reach the disk as zero bytes (the size was journalled,
    the data was not). ``file``: the target file's path (default: the file
    written last). ``keep_dir_ops``: how many pending directory operations
    (create, rename, unlink not yet followed by ``sync_dir``) persist, in order
    (None: all). ``keep_other_files``: other files keep all their unsynced
    operations (a process crash) instead of none (a power loss). ``drop``:
    indexes of the target's unsynced writes that do NOT reach the disk although
    later ones kept do (a disk without barriers writes back out of order): the
    bytes under them stay what the disk held, zeros past the old end.
    ``page_cache``: the kernel survived (a process crash): what survives is
    still in the page cache, readable but not yet durable, so a power loss of
    the new layer (its ``crash()``) can still lose it; only ``keep_ops`` and
    ``torn`` apply (every directory entry and other file survives).
    """

    keep_ops: int | None = 0
    torn: int | None = None
    zero_fill: bool = False
    file: str | None = None
    keep_dir_ops: int | None = 0
    keep_other_files: bool = False
    drop: tuple[int, ...] = ()
    page_cache: bool = False

    def label(self) -> str:
        parts = [f"keep={'all' if self.keep_ops is None else self.keep_ops}"]
        if self.torn is not None:
            parts.append(f"torn={self.torn}")
        if self.zero_fill:
            parts.append("zero-fill")
        if self.keep_dir_ops != 0:
            parts.append(f"dir={'all' if self.keep_dir_ops is None else self.keep_dir_ops}")
        if self.keep_other_files:
            parts.append("others-kept")
        if self.drop:
            parts.append(f"dropped={','.join(map(str, self.drop))}")
        if self.page_cache:
            parts.append("page-cache")
        return " ".join(parts)


POWER_LOSS = CrashSpec()
"""Every byte and directory entry not yet fsynced is lost."""

PROCESS_CRASH = CrashSpec(keep_ops=None, keep_dir_ops=None, keep_other_files=True, page_cache=True)
"""The process died but the kernel kept everything it was given (SIGKILL), unsynced as it was."""


@dataclass
class Fault:
    """One armed fault: the ``nth`` matching call (and ``times - 1`` after it) fails.

    ``op`` is an operation name ("append", "sync", "sync_dir", "create", "rename",
    "unlink", "truncate", "open_append", "pread", ...; "*" for any); ``path``
    restricts it to paths containing that text. ``errno``: the OSError's errno,
    or CRASH to raise SimulatedCrash. ``partial``: for "append" (or
    "preallocate"), the bytes (zeros) written before the error.
    ``drop_unsynced``: for "sync", the failed fsync drops the file's dirty
    data (Linux: a later fsync "succeeds" without it).
    """

    op: str
    errno: int = errno_mod.EIO
    nth: int = 1
    times: int | None = 1
    path: str | None = None
    partial: int | None = None
    drop_unsynced: bool = True
    seen: int = 0
    fired: int = 0

    def matches(self, op: str, path: str) -> bool:
        return (self.op == "*" or self.op == op) and (self.path is None or self.path in path)

    def trigger(self) -> bool:
        """Count one matching call; whether it fails."""
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class Syscall:
    """One traced call: its number (from 1), operation and path, and bytes written."""

    n: int
    op: str
    path: str
    nbytes: int = 0


def crashed_content(ino: Inode, spec: CrashSpec, is_target: bool) -> bytes:
    """What one file holds after a crash: its durable bytes, plus what ``spec`` keeps of its unsynced ops.

    ``is_target``: the file the crash tears (``CrashSpec.file``, or the one written last); every
    other file keeps all its unsynced operations or none (``keep_other_files``).
    """
    content = bytearray(ino.durable)
    if not is_target:
        if spec.keep_other_files:
            for op in ino.pending:
                apply_op(content, op)
        return bytes(content)
    ops = ino.pending
    keep = len(ops) if spec.keep_ops is None else min(spec.keep_ops, len(ops))
    for i, op in enumerate(ops[:keep]):
        if i in spec.drop and op[0] == "w":
            if op[1] > len(content):  # what a later write lands past still reads as zeros
                apply_op(content, ("t", op[1]))
            continue
        apply_op(content, op)
    rest = ops[keep:]
    if rest and spec.torn is not None and rest[0][0] == "w":
        _, off, data = rest[0]  # type: ignore[misc]
        torn = max(0, min(spec.torn, len(data)))
        kept = data[:torn] + (bytes(len(data) - torn) if spec.zero_fill else b"")
        if kept:
            apply_op(content, ("w", off, kept))
        rest = rest[1:]
    if spec.zero_fill:
        for op in rest:
            apply_op(content, op if op[0] == "t" else ("w", op[1], bytes(len(op[2]))))  # type: ignore[misc]
    return bytes(content)


def sector_tears(offset: int, length: int, sector: int = SECTOR_SIZE) -> list[int]:
    """Byte counts ``t`` (0 < t < length) at which a write at ``offset`` crosses a sector boundary."""
    first = (-offset) % sector or sector
    return list(range(first, length, sector))


def torn_write_points(offset: int, data: bytes, *, frame_ends: Iterable[int] = (), every: int = 0) -> list[int]:
    """Sampled tear points inside one write: its first bytes, sector edges, frame edges +-1, its last bytes.

    ``frame_ends``: offsets (relative to the write) where whole frames end.
    ``every``: also every ``every``-th byte (0: no regular sampling).
    """
    n = len(data)
    pts = {1, 2, 3, 4, 5, 6, 7, 8, n - 1, n // 2}
    pts.update(sector_tears(offset, n))
    for e in frame_ends:
        pts.update((e - 1, e, e + 1))
    if every:
        pts.update(range(every, n, every))
    return sorted(p for p in pts if 0 < p < n)


__all__ = [
    "CRASH",
    "CrashSpec",
    "DirOp",
    "Fault",
    "FileOp",
    "Inode",
    "MUTATING_OPS",
    "POWER_LOSS",
    "PROCESS_CRASH",
    "SECTOR_SIZE",
    "SimulatedCrash",
    "Syscall",
    "TruncOp",
    "WriteOp",
    "apply_op",
    "crashed_content",
    "sector_tears",
    "torn_write_points",
]
