"""Segment files: names, the 32-byte header, and listing a directory (pure helpers).

A segment is ``NNNNNN.wal``: a header, then whole record frames, then (once
sealed) one seal frame giving its record count, so reopening a cleanly closed
log reads one small frame per segment instead of rescanning it.

Header (32 bytes, little-endian)::

    8s   magic  b"NORIWAL\\0"
    u16  format version (1)
    u16  header size (32)
    u32  node_id
    u64  segment_id (must match the file name)
    u32  back: segment_id minus the id of the segment this one follows
         (0: it follows none -- the log's first -- or an older version wrote it)
    u32  crc32c of the 28 bytes before it

Rules (the segment sequence; etcd refuses a WAL whose file sequence has a hole, ours may skip):
1. Ids only grow and are never reused, but they may skip: recovery removes a
   last segment whose header did not survive, and the next one takes a new id.
   ``back`` records which segment each one follows, so a skip is told apart
   from a lost segment.
2. GC deletes a prefix, oldest first, each unlink durable before the next: so
   a predecessor that is gone while an older segment is still there was lost
   (``sequence_problem``), never deleted.
"""

from __future__ import annotations

import re
import struct
from bisect import bisect_left, bisect_right
from typing import Sequence

from crc32c import crc32c

from .codec import SEAL_FRAME_SIZE

MAGIC = b"NORIWAL\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHHIQI")
HEADER_SIZE = _HEADER.size + 4
assert HEADER_SIZE == 32
MIN_SEGMENT_SIZE = 4096
SUFFIX = ".wal"
TMP_SUFFIX = ".wal.tmp"
_NAME = re.compile(r"^(\d{6}|[1-9]\d{6,})\.wal$")  # exactly segment_name(id): six digits, or more without a 0 lead


def segment_name(segment_id: int) -> str:
    """File name of a segment: zero-padded to six digits, growing beyond when needed."""
    return f"{segment_id:06d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The segment id of a file name, or None for anything that is not a segment (ignored).

    Only the name ``segment_name`` gives an id is a segment (``0000003.wal`` is not: recovery,
    readers, dump and verify all ignore it; verify warns about it).
    """
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def segment_ids(names: list[str]) -> list[int]:
    """Sorted segment ids among directory entries; junk files are ignored."""
    return sorted(i for i in map(parse_segment_name, names) if i is not None)


SET_ASIDE_SUFFIX = ".broken"
SET_ASIDE_TMP_SUFFIX = SET_ASIDE_SUFFIX + ".tmp"
_SET_ASIDE_NAME = re.compile(r"^(\d{6,})\.wal\.(\d+)(?:-\d+)?\.broken$")


def set_aside_name(segment_id: int, offset: int, copy: int = 1) -> str:
    """Where recovery keeps the bytes it took out of a segment, from ``offset`` on (etcd's ``.broken``).

    ``copy`` > 1 names a later one for the same place: an earlier file is never replaced.
    """
    return f"{segment_name(segment_id)}.{offset}{'' if copy == 1 else f'-{copy}'}{SET_ASIDE_SUFFIX}"


def set_aside_files(names: list[str]) -> list[tuple[int, int, str]]:
    """(segment id, offset, name) of every set-aside file among directory entries, in order."""
    found = ((_SET_ASIDE_NAME.match(n), n) for n in names)
    return sorted((int(m.group(1)), int(m.group(2)), n) for m, n in found if m)


def encode_header(segment_id: int, node_id: int = 0, predecessor: int | None = None) -> bytes:
    """The header of segment ``segment_id``, which follows segment ``predecessor`` (None: none)."""
    back = 0 if predecessor is None else segment_id - predecessor
    if predecessor is not None and not 0 < back < 2**32:
        raise ValueError(f"segment {segment_id} cannot follow segment {predecessor}")
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, node_id, segment_id, back)
    return head + struct.pack("<I", crc32c(head))


def header_predecessor(data: bytes) -> int | None:
    """The segment a valid header (``check_header``) says its segment follows; None when it names none."""
    _magic, _version, _size, _node, seg, back = _HEADER.unpack_from(data)
    return seg - back if back else None


def check_header(data: bytes, segment_id: int) -> str | None:
    """None if ``data`` is a valid header for ``segment_id``, else what is wrong with it."""
    if len(data) < HEADER_SIZE:
        return f"header cut short at {len(data)} of {HEADER_SIZE} bytes"
    magic, version, size, _node, seg, back = _HEADER.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _HEADER.size)
    if crc != crc32c(data[: _HEADER.size]):
        return "header checksum mismatch"
    if magic != MAGIC:
        return "not a nori-wal segment (bad magic)"
    if version != FORMAT_VERSION or size != HEADER_SIZE:
        return f"unsupported segment format version {version}"
    if seg != segment_id:
        return f"header says segment {seg}, file name says {segment_id}"
    if back > seg:
        return f"header says segment {seg} follows segment {seg - back}"
    return None


def sequence_problem(segment_id: int, predecessor: int | None, present: Sequence[int]) -> str | None:
    """What breaks the sequence at ``segment_id``, given the sorted ids ``present`` now; None if nothing.

    ``predecessor``: the segment its header says it follows. Gone while an
    older segment is present, it was lost (Rule 2); present, nothing may lie
    between the two.
    """
    if predecessor is None:
        return None
    lo = bisect_left(present, predecessor)
    if lo == len(present) or present[lo] != predecessor:
        if lo == 0:
            return None  # GC deleted it, and everything before it
        return (
            f"segment {predecessor} is missing: segment {segment_id} follows it, and segment "
            f"{present[lo - 1]}, older, is still here (GC deletes oldest first): its records are lost "
            f"(restore it, or move the segments before it out of the directory to keep the log from "
            f"segment {segment_id} on)"
        )
    stray = bisect_left(present, segment_id) - bisect_right(present, predecessor)
    if stray > 0:
        return (
            f"segment {present[lo + 1]} does not belong to the log: segment {segment_id} follows "
            f"segment {predecessor} directly (move it out of the directory)"
        )
    return None


def max_frame_size(max_segment_size: int) -> int:
    """The largest record frame a segment of this size can hold (header and seal reserved)."""
    return max_segment_size - HEADER_SIZE - SEAL_FRAME_SIZE
