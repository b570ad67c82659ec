"""Consumer cursors: names, and the bytes of a cursor or expiry file (pure).

Rules:
1. A name is 1-64 characters of ``[A-Za-z0-9._-]`` starting with a letter or
   digit: it becomes part of a file name, so it can never name a path
   elsewhere (no ``/``, no ``..``, no leading dot).
2. A file is checked whole before anything in it is believed: magic, version,
   kind, its exact length, the name it was written for and a CRC32C over all
   of it. Anything else (torn, truncated, garbage, another cursor's file) is
   ``None`` from ``decode_cursor``: damage the caller reports, never a
   position it trusts.
3. ``next`` is where the consumer resumes: just after the last committed
   record (``START`` before the first commit of an ``earliest`` cursor). GC
   keeps ``next``'s segment and every later one (``retention``).

The layout (little-endian, docs/FORMAT.md "Consumer cursors")::

    8s   magic b"NORICUR\\0"
    u16  version (1)
    u16  kind (1: cursor, 2: expiry)
    u32  zero
    u64  a_segment, u64 a_offset   cursor: next (resume here); expiry: the first lost position
    u64  b_segment, u64 b_offset   cursor: the last committed record (all ones: none);
                                   expiry: where the log resumed after the deletion
    u64  time_ns                   unix time of the commit / expiry (0: never)
    u16  name length, then the name (UTF-8)
    u32  crc32c of every byte before it
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from crc32c import crc32c

from .position import Position

MAGIC = b"NORICUR\x00"
VERSION = 1
KIND_CURSOR = 1
KIND_EXPIRY = 2
CONSUMERS_DIR = "consumers"
CURSOR_SUFFIX = ".cursor"
EXPIRY_SUFFIX = ".expired"
LOCK_SUFFIX = ".lock"
TMP_SUFFIX = ".tmp"
MAX_NAME = 64
_NONE = 2**64 - 1  # an absent position (a cursor with no commit yet)
_HEAD = struct.Struct("<8sHHIQQQQQH")
_CRC = struct.Struct("<I")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a consumer (Rule 1), or None when it can."""
    if not isinstance(name, str):
        return f"a consumer name must be a str, got {type(name).__name__}"
    if not _NAME_RE.fullmatch(name):
        return (
            f"bad consumer name {name!r}: use 1-{MAX_NAME} characters of A-Z a-z 0-9 . _ - "
            f"starting with a letter or digit"
        )
    return None


def check_name(name: object) -> str:
    """``name`` if it is a valid consumer name; else ValueError saying why."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class CursorState:
    """A cursor file's content: where the consumer resumes and what it last committed."""

    name: str
    next: Position
    committed: Position | None = None
    time_ns: int = 0


@dataclass(frozen=True)
class Expiry:
    """An expiry file's content: retention deleted ``lost_from`` .. ``resumes_at`` before the cursor read them."""

    name: str
    lost_from: Position
    resumes_at: Position
    time_ns: int = 0


def _pack(kind: int, name: str, a: Position, b: Position | None, time_ns: int) -> bytes:
    raw = name.encode()
    bs, bo = (_NONE, _NONE) if b is None else b
    body = _HEAD.pack(MAGIC, VERSION, kind, 0, a.segment_id, a.offset, bs, bo, time_ns, len(raw)) + raw
    return body + _CRC.pack(crc32c(body))


def encode_cursor(state: CursorState) -> bytes:
    return _pack(KIND_CURSOR, state.name, state.next, state.committed, state.time_ns)


def encode_expiry(expiry: Expiry) -> bytes:
    return _pack(KIND_EXPIRY, expiry.name, expiry.lost_from, expiry.resumes_at, expiry.time_ns)


def _unpack(data: bytes, kind: int, name: str) -> tuple[Position, Position | None, int] | None:
    """(a, b, time_ns) of a whole, valid file of ``kind`` written for ``name``; None otherwise (Rule 2)."""
    if len(data) < _HEAD.size + _CRC.size:
        return None
    magic, version, got_kind, zero, a_s, a_o, b_s, b_o, time_ns, nlen = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION or got_kind != kind or zero != 0:
        return None
    end = _HEAD.size + nlen
    if len(data) != end + _CRC.size or crc32c(data[:end]) != _CRC.unpack_from(data, end)[0]:
        return None
    if data[_HEAD.size : end] != name.encode() or _NONE in (a_s, a_o):
        return None
    b = None if (b_s, b_o) == (_NONE, _NONE) else Position(b_s, b_o)
    return Position(a_s, a_o), b, time_ns


def decode_cursor(data: bytes, name: str) -> CursorState | None:
    """The cursor ``data`` holds for ``name``; None when it is not a whole, valid cursor file of that name."""
    got = _unpack(data, KIND_CURSOR, name)
    return None if got is None else CursorState(name, got[0], got[1], got[2])


def decode_expiry(data: bytes, name: str) -> Expiry | None:
    """The expiry ``data`` holds for ``name``; None when it is not a whole, valid expiry file of that name."""
    got = _unpack(data, KIND_EXPIRY, name)
    if got is None or got[1] is None:
        return None
    return Expiry(name, got[0], got[1], got[2])


def name_of(file_name: str, suffix: str = CURSOR_SUFFIX) -> str | None:
    """The consumer a file in the consumers directory belongs to (by ``suffix``), or None."""
    if not file_name.endswith(suffix):
        return None
    name = file_name[: -len(suffix)]
    return name if name_problem(name) is None else None
