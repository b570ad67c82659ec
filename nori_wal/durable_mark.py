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
4. It is evidence for recovery and ``verify`` too (as Kafka's recovery-point
   checkpoint is): records below it were durable, so a last segment that ends
   (or must be cut) below it, or a mark naming a segment past the last one,
   lost records the writer had made durable: corruption, not what a crash
   leaves. A stale or missing mark only knows less. Whoever judges reads it
   before anything can move it: the next writer before its recovery (its
   publisher does not rewrite the file when it opens it), ``verify`` before
   its scan, so all below it was whole before the scan began. A hot copy of a
   live directory should copy ``DURABLE`` first: copied after the segments it
   may name records the copy missed.
"""

from __future__ import annotations

import mmap
import os
import struct

from crc32c import crc32c

from .fs import FileHandle, FileLayer, open_private
from .position import Position

MARK_FILE = "DURABLE"
MAGIC = b"NORIDUR\x00"
_BODY = struct.Struct("<8sQQ")
MARK_SIZE = _BODY.size + 8
_CRC = struct.Struct("<II")
READ_ATTEMPTS = 3  # a read that catches the writer mid-update is read again (Rule 3)


def encode_mark(position: Position) -> bytes:
    body = _BODY.pack(MAGIC, position.segment_id, position.offset)
    return body + _CRC.pack(crc32c(body), 0)


def decode_mark(data: bytes) -> Position | None:
    """The position a mark holds; None if ``data`` is not a whole, valid mark."""
    if len(data) < MARK_SIZE or crc32c(data[: _BODY.size]) != _CRC.unpack_from(data, _BODY.size)[0]:
        return None
    magic, segment_id, offset = _BODY.unpack_from(data)
    return Position(segment_id, offset) if magic == MAGIC else None


def records_lost_below_mark(mark: Position | None, segment_id: int, end: int) -> str | None:
    """Why the records of segment ``segment_id`` ending at ``end`` lost durable ones (Rule 4), or None."""
    if mark is None or mark.segment_id != segment_id or end >= mark.offset:
        return None
    return (
        f"records the writer had made durable are lost: its durable mark is {mark.segment_id}:{mark.offset}, "
        f"the records end at {end}"
    )


def segments_lost_past_mark(mark: Position | None, last_segment: int | None) -> str | None:
    """Why a log whose last segment is ``last_segment`` (None: no segment) lost durable segments (Rule 4), or None."""
    if mark is None or (last_segment is not None and mark.segment_id <= last_segment):
        return None
    last = "no segment is left" if last_segment is None else f"the last segment is {last_segment}"
    return (
        f"segments holding records the writer had made durable are gone: its durable mark is "
        f"{mark.segment_id}:{mark.offset}, {last}"
    )


def read_mark(layer: FileLayer, directory: str) -> Position | None:
    """The mark in ``directory`` now (None: no valid mark); an I/O error other than a missing file raises."""
    reader = MarkReader(layer, directory)
    try:
        return reader.read()
    finally:
        reader.close()


class MarkPublisher:
    """The writer's side: a shared mapping of ``DIR/DURABLE`` (Rules 1 and 2)."""

    def __init__(self, directory: str):
        # Opening never rewrites a whole mark (only a shorter file, which holds none, is extended
        # with zeros): recovery reads the previous writer's mark after this (Rule 4).
        fd = open_private(os.path.join(directory, MARK_FILE), os.O_RDWR)
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
