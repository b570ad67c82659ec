"""The durable mark: how far the writer's fsyncs have reached, published for readers in other processes.

A reader that must never act on a record a power loss could still take (a
consumer, as Kafka's consumers read only up to the high watermark and etcd
applies only committed entries) reads up to this position and no further
(``open_reader(..., durable_only=True)``).

``DIR/DURABLE`` is 32 bytes, little-endian::

    8s   magic b"NORIDUR\\0"
    u64  segment_id   \\ every record before (segment_id, offset) is durable
    u64  offset       /
    u32  crc32c of the 24 bytes before it
    u32  zero

Rules:
1. The writer rewrites it after every fsync that moves its durable position,
   through a shared mapping: no system call per group. It is never fsynced:
   a hint for live readers, not part of the log. Lost, torn or stale after a
   crash it only holds readers back (it is written after the fsync it reports,
   so it never runs ahead of the disk); the next writer publishes what its
   recovery made durable before it appends anything.
2. It is updated in place, never replaced, so a reader's open descriptor keeps
   seeing it.
3. A copy that fails its CRC (read while being written) is read again; a
   missing or invalid mark means nothing is known to be durable yet.
"""

from __future__ import annotations

import mmap
import os
import struct

from crc32c import crc32c

from .fs import FileHandle, FileLayer
from .position import Position

MARK_FILE = "DURABLE"
MAGIC = b"NORIDUR\x00"
_BODY = struct.Struct("<8sQQ")
MARK_SIZE = _BODY.size + 8
_CRC = struct.Struct("<II")
READ_ATTEMPTS = 3           # a read that catches the writer mid-update is read again (Rule 3)


def encode_mark(position: Position) -> bytes:
    body = _BODY.pack(MAGIC, position.segment_id, position.offset)
    return body + _CRC.pack(crc32c(body), 0)


def decode_mark(data: bytes) -> Position | None:
    """The position a mark holds; None if ``data`` is not a whole, valid mark."""
    if len(data) < MARK_SIZE or crc32c(data[:_BODY.size]) != _CRC.unpack_from(data, _BODY.size)[0]:
        return None
    magic, segment_id, offset = _BODY.unpack_from(data)
    return Position(segment_id, offset) if magic == MAGIC else None


class MarkPublisher:
    """The writer's side: a shared mapping of ``DIR/DURABLE`` (Rules 1 and 2)."""

    def __init__(self, directory: str):
        fd = os.open(os.path.join(directory, MARK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size < MARK_SIZE:
                os.ftruncate(fd, MARK_SIZE)
            self._map = mmap.mmap(fd, MARK_SIZE)
        finally:
            os.close(fd)

    def publish(self, position: Position) -> None:
        self._map[:MARK_SIZE] = encode_mark(position)

    def close(self) -> None:
        self._map.close()


class MarkReader:
    """A reader's side: reads the mark through a FileLayer, opening the file once it exists."""

    def __init__(self, layer: FileLayer, directory: str):
        self._layer = layer
        self._path = os.path.join(directory, MARK_FILE)
        self._fh: FileHandle | None = None

    def read(self) -> Position | None:
        """The published durable position, or None when there is none (Rule 3)."""
        if self._fh is None:
            try:
                self._fh = self._layer.open_read(self._path)
            except FileNotFoundError:
                return None
        for _ in range(READ_ATTEMPTS):
            position = decode_mark(self._fh.pread(MARK_SIZE, 0))
            if position is not None:
                return position
        return None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
