"""The dedupe index and key files: which idempotency keys the log holds, and where (pure: no I/O).

Rules:
1. An entry is (key, Position of the record that first carried it, the time
   it was appended, wall-clock ms). A key is remembered at least ``window``
   after that time; the first record is the original: a later add of a key
   still remembered changes nothing (``add`` returns False).
2. Memory is bounded by ``max_keys``. Forgetting a key inside its window
   would turn a retry into a duplicate, so the index never evicts early: a
   NEW key that would exceed ``max_keys`` after expired keys are dropped is
   refused (``DedupeCapacityError``) and nothing is written; duplicates are
   still answered. Size it as keyed appends per second x window.
   Per key: about 130 bytes + the key's length (163 for a 36-byte key: a dict slot, the key's bytes
   object, one int packing position and time, a deque slot;
   ``scripts/dedupe_bench.py`` measures it).
3. Keys are added in append order with a clock that never runs backwards
   (``now`` is raised to the last one seen), so expiry is a walk from the
   oldest end: O(1) amortised per key.
4. Key files (``NNNNNN.keys``, docs/FORMAT.md) hold a sealed segment's keys
   and their times, so an open need not scan sealed segments. One is checked
   against the seal of the segment it describes and its CRCs; anything that
   does not match is ignored and the segment is scanned instead: a key file
   is a cache, never trusted over the log.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Iterator, NamedTuple

from crc32c import crc32c

from .errors import DedupeCapacityError
from .position import Position

_SEG_SHIFT = 64
_TIME_SHIFT = 128
_LOW = (1 << 64) - 1


class AppendResult(NamedTuple):
    """Where a record is, and whether this append found it already there (a key within the window)."""

    position: Position
    duplicate: bool


class DedupeIndex:
    """key -> (original Position, append time in ms) for keys appended within ``window_ms``."""

    def __init__(self, window_ms: int, max_keys: int):
        if window_ms <= 0 or max_keys < 1:
            raise ValueError(f"window_ms and max_keys must be positive, got {window_ms}, {max_keys}")
        self.window_ms = window_ms
        self.max_keys = max_keys
        self._entries: dict[bytes, int] = {}  # key -> time << 128 | segment id << 64 | offset
        self._order: deque[bytes] = deque()  # keys in the order they were added (oldest first)
        self._now = 0  # the latest time seen: the clock never runs backwards here (Rule 3)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def _clock(self, now_ms: int) -> int:
        if now_ms > self._now:
            self._now = now_ms
        return self._now

    def expire(self, now_ms: int) -> int:
        """Drop keys older than the window at ``now_ms``; returns how many were dropped."""
        cutoff = self._clock(now_ms) - self.window_ms
        entries, order = self._entries, self._order
        dropped = 0
        while order and entries[order[0]] >> _TIME_SHIFT < cutoff:
            del entries[order.popleft()]  # each key is queued once, in time order (Rule 3)
            dropped += 1
        return dropped

    def lookup(self, key: bytes, now_ms: int) -> Position | None:
        """The original Position of ``key`` if it is remembered at ``now_ms``, else None."""
        packed = self._entries.get(key)
        if packed is None or packed >> _TIME_SHIFT < self._clock(now_ms) - self.window_ms:
            return None  # (an expired key is dropped at the next ``expire``)
        return Position((packed >> _SEG_SHIFT) & _LOW, packed & _LOW)

    def check_room(self, new_keys: int, now_ms: int) -> None:
        """Raise DedupeCapacityError unless ``new_keys`` more keys fit (after dropping expired ones)."""
        if len(self._entries) + new_keys <= self.max_keys:
            return
        self.expire(now_ms)
        if len(self._entries) + new_keys > self.max_keys:
            raise DedupeCapacityError(
                f"the dedupe index holds {len(self._entries)} keys appended within the last "
                f"{self.window_ms} ms and may hold at most {self.max_keys} (WalConfig.dedupe_max_keys): "
                f"{new_keys} new key(s) refused, nothing written. Raise dedupe_max_keys (about 130 bytes + the "
                f"key's length each) or shorten dedupe_window"
            )

    def add(self, key: bytes, position: Position, now_ms: int, *, check: bool = True) -> bool:
        """Remember ``key`` at ``position`` (appended at ``now_ms``); False if it is already remembered.

        ``check`` refuses a new key past ``max_keys`` (Rule 2, DedupeCapacityError).
        """
        now = self._clock(now_ms)
        if check and self.lookup(key, now) is None:
            self.check_room(1, now)
        return self._put(key, position, now)

    def restore(self, key: bytes, position: Position, time_ms: int) -> bool:
        """Remember a key read back from the log or a key file, appended at ``time_ms``.

        Keys come in log order and are never refused (they are in the log
        already). A time earlier than one restored before is raised to it (Rule 3:
        remembered longer, never shorter). False if the key was already remembered.
        """
        return self._put(key, position, self._clock(time_ms))

    def _put(self, key: bytes, position: Position, t: int) -> bool:
        """Insert at time ``t`` (>= every time held); the first position of a remembered key stays."""
        old = self._entries.get(key)
        if old is not None:
            if old >> _TIME_SHIFT >= t - self.window_ms:
                return False
            self.expire(t)  # the old entry is past the window: this drops it, and its queue slot
        self._entries[key] = (t << _TIME_SHIFT) | (position.segment_id << _SEG_SHIFT) | position.offset
        self._order.append(key)
        return True

    def segment_entries(self, segment_id: int) -> list[tuple[bytes, int, int]]:
        """``(key, offset, time_ms)`` of the keys remembered in ``segment_id``, in log order.

        Keys are added in log order, so they are a run at the newest end: the
        walk stops at the first key of an earlier segment.
        """
        out: list[tuple[bytes, int, int]] = []
        entries = self._entries
        for key in reversed(self._order):
            packed = entries[key]
            sid = (packed >> _SEG_SHIFT) & _LOW
            if sid < segment_id:
                break
            if sid == segment_id:
                out.append((key, packed & _LOW, packed >> _TIME_SHIFT))
        out.reverse()
        return out

    def items(self) -> Iterator[tuple[bytes, Position, int]]:
        """Every remembered ``(key, position, time_ms)``, oldest first."""
        for key in self._order:
            packed = self._entries[key]
            yield key, Position((packed >> _SEG_SHIFT) & _LOW, packed & _LOW), packed >> _TIME_SHIFT


# -- key files ------------------------------------------------------------------------------

KEY_FILE_SUFFIX = ".keys"
KEY_FILE_MAGIC = b"NORIKEYS"
KEY_FILE_VERSION = 1
_KF_HEAD = struct.Struct("<8sHHIQQQQ")  # magic, version, header size, count, segment, data_end, records, newest
KEY_FILE_HEADER_SIZE = _KF_HEAD.size + 8  # + CRC32C of the header, CRC32C of the entries
_KF_ENTRY = struct.Struct("<QQB")  # time_ms, offset, key length; then the key


class KeyFileHead(NamedTuple):
    """The checked header of a key file."""

    entry_count: int
    segment_id: int
    data_end: int
    record_count: int
    newest_ms: int
    entries_crc: int


def key_file_name(segment_id: int) -> str:
    return f"{segment_id:06d}{KEY_FILE_SUFFIX}"


def parse_key_file_name(name: str) -> int | None:
    """The segment id a key file name is for, or None."""
    stem, dot, ext = name.partition(".")
    if dot and "." + ext == KEY_FILE_SUFFIX and len(stem) >= 6 and stem.isdigit() and stem.isascii():
        return int(stem)
    return None


def encode_key_file(segment_id: int, data_end: int, record_count: int, entries: list[tuple[bytes, int, int]]) -> bytes:
    """The bytes of the key file for a segment sealed at ``data_end`` holding ``record_count`` records."""
    body = b"".join(_KF_ENTRY.pack(t, off, len(key)) + key for key, off, t in entries)
    newest = max((t for _k, _o, t in entries), default=0)
    head = _KF_HEAD.pack(
        KEY_FILE_MAGIC, KEY_FILE_VERSION, KEY_FILE_HEADER_SIZE, len(entries), segment_id, data_end, record_count, newest
    )
    return head + struct.pack("<II", crc32c(head), crc32c(body)) + body


def decode_key_file_head(data: bytes, segment_id: int, data_end: int, record_count: int) -> KeyFileHead | str:
    """The header of a key file if it is valid for that segment and seal, else the reason it is not."""
    if len(data) < KEY_FILE_HEADER_SIZE:
        return "key file header cut short"
    magic, version, hsize, count, sid, end, records, newest = _KF_HEAD.unpack_from(data)
    head_crc, body_crc = struct.unpack_from("<II", data, _KF_HEAD.size)
    if magic != KEY_FILE_MAGIC or crc32c(data[: _KF_HEAD.size]) != head_crc:
        return "not a valid key file header"
    if version != KEY_FILE_VERSION or hsize != KEY_FILE_HEADER_SIZE:
        return f"unknown key file version {version}"
    if (sid, end, records) != (segment_id, data_end, record_count):
        return f"describes segment {sid} sealed at {end} with {records} records, not this segment's seal"
    return KeyFileHead(count, sid, end, records, newest, body_crc)


def decode_key_file_entries(head: KeyFileHead, body: bytes) -> list[tuple[bytes, int, int]] | str:
    """``(key, offset, time_ms)`` of a key file's entries, or the reason they are not valid."""
    if crc32c(body) != head.entries_crc:
        return "key file entries fail their checksum"
    out: list[tuple[bytes, int, int]] = []
    p, n = 0, len(body)
    unpack = _KF_ENTRY.unpack_from
    for _ in range(head.entry_count):
        if p + _KF_ENTRY.size > n:
            return "key file entries cut short"
        t, off, klen = unpack(body, p)
        p += _KF_ENTRY.size
        if not 1 <= klen <= 128 or p + klen > n or off >= head.data_end:
            return "key file entry out of range"
        out.append((body[p : p + klen], off, t))
        p += klen
    if p != n:
        return "key file has bytes after its entries"
    return out
