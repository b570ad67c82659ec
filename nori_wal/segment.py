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
    u32  reserved (0)
    u32  crc32c of the 28 bytes before it
"""

from __future__ import annotations

import re
import struct

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
_NAME = re.compile(r"^(\d{6,})\.wal$")


def segment_name(segment_id: int) -> str:
    """File name of a segment: zero-padded to six digits, growing beyond when needed."""
    return f"{segment_id:06d}{SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The segment id of a file name, or None for anything that is not a segment (ignored)."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def segment_ids(names: list[str]) -> list[int]:
    """Sorted segment ids among directory entries; junk files are ignored."""
    return sorted(i for i in map(parse_segment_name, names) if i is not None)


def encode_header(segment_id: int, node_id: int = 0) -> bytes:
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, HEADER_SIZE, node_id, segment_id, 0)
    return head + struct.pack("<I", crc32c(head))


def check_header(data: bytes, segment_id: int) -> str | None:
    """None if ``data`` is a valid header for ``segment_id``, else what is wrong with it."""
    if len(data) < HEADER_SIZE:
        return f"header cut short at {len(data)} of {HEADER_SIZE} bytes"
    magic, version, size, _node, seg, _res = _HEADER.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _HEADER.size)
    if crc != crc32c(data[:_HEADER.size]):
        return "header checksum mismatch"
    if magic != MAGIC:
        return "not a nori-wal segment (bad magic)"
    if version != FORMAT_VERSION or size != HEADER_SIZE:
        return f"unsupported segment format version {version}"
    if seg != segment_id:
        return f"header says segment {seg}, file name says {segment_id}"
    return None


def max_frame_size(max_segment_size: int) -> int:
    """The largest record frame a segment of this size can hold (header and seal reserved)."""
    return max_segment_size - HEADER_SIZE - SEAL_FRAME_SIZE
