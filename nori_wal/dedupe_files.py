"""The dedupe index on disk: key files written at a seal, and the rebuild on open (the I/O shell).

Rules:
1. A segment's key file (``NNNNNN.keys``) is made durable BEFORE its seal:
   tmp file, fsync, rename, directory fsync. So a sealed segment without a
   key file held no key within the window when it was sealed, and a crash
   before the seal leaves the segment unsealed (scanned at the next open).
   A segment sealed with no keys removes a key file an earlier attempt left.
2. The rebuild reads, per segment, only what it must: an earlier segment
   without a key file is skipped unread; one with a key file has its seal
   and the file's header read, and its entries only when its newest key is
   within the window. The last segment, when it is not sealed (a crash), is
   scanned, and so is any segment whose key file does not match its seal or
   its checksums (a key file is never trusted over the log).
3. Keys found by a scan get the rebuild's clock as their time (their append
   time is not in the frame): remembered a whole window from the open,
   never shorter than from their append.
4. Cost: a clean reopen reads the key files of the segments written within
   the window (O(keys appended within the window), about a microsecond per
   key) and one header per older keyed segment; after a crash add one scan
   of the last segment (O(max_segment_size), whatever the window).
5. Key files of segments that are gone (GC) and leftover ``.keys.tmp`` files
   are deleted at open and after GC; they describe nothing.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from crc32c import crc32c

from .codec import FLAG_IDEMPOTENCY, FLAG_SEAL, FORMAT_MAX_FRAME, frame_layout, idempotency_key_of
from .dedupe import (
    KEY_FILE_HEADER_SIZE,
    KEY_FILE_SUFFIX,
    DedupeIndex,
    decode_key_file_entries,
    decode_key_file_head,
    encode_key_file,
    key_file_name,
    parse_key_file_name,
)
from .fs import FileHandle, FileLayer, replace_durably
from .position import Position
from .record import BytesLike
from .recovery import read_seal
from .segment import HEADER_SIZE, segment_name

KEY_FILE_TMP_SUFFIX = KEY_FILE_SUFFIX + ".tmp"


@dataclass(frozen=True)
class RebuildInfo:
    """What rebuilding the dedupe index at open read."""

    keys: int  # keys remembered after the rebuild
    key_files_read: int  # key files whose entries were loaded
    segments_scanned: int  # segments read frame by frame (no usable key file, or the unsealed last one)
    key_files_ignored: int  # key files that did not match their segment (the segment was scanned instead)


def write_key_file(
    layer: FileLayer, directory: str, segment_id: int, data_end: int, record_count: int, index: DedupeIndex
) -> None:
    """Make the key file of ``segment_id``, about to be sealed at ``data_end``, durable (Rule 1).

    OSError propagates: the caller (the seal) fail-stops.
    """
    cols = index.segment_columns(segment_id)
    final = os.path.join(directory, key_file_name(segment_id))
    if not cols.keys:
        if layer.exists(final):
            layer.unlink(final)
            layer.sync_dir(directory)
        return
    replace_durably(layer, final, [encode_key_file(segment_id, data_end, record_count, cols)])


def remove_stale_key_files(layer: FileLayer, directory: str, segment_ids: list[int]) -> int:
    """Delete key files of segments that are gone and leftover tmp files (Rule 5); returns how many."""
    present = set(segment_ids)
    removed = 0
    for name in layer.listdir(directory):
        sid = parse_key_file_name(name)
        if name.endswith(KEY_FILE_TMP_SUFFIX) or (sid is not None and sid not in present):
            try:
                layer.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            removed += 1
    if removed:
        layer.sync_dir(directory)
    return removed


def rebuild_index(
    layer: FileLayer, directory: str, segment_ids: list[int], index: DedupeIndex, now_ms: int
) -> RebuildInfo:
    """Fill ``index`` with the keys the log holds within the window (Rules 2-4)."""
    remove_stale_key_files(layer, directory, segment_ids)
    names = set(layer.listdir(directory))
    read = scanned = ignored = 0
    cutoff = now_ms - max(index.window_ms, index.auto_window_ms)  # (a key file of either class)
    for i, sid in enumerate(segment_ids):
        last = i == len(segment_ids) - 1
        has_file = key_file_name(sid) in names
        if not has_file and not last:
            continue
        handle = layer.open_read(os.path.join(directory, segment_name(sid)))
        try:
            size = handle.size()
            seal = read_seal(handle, size)
            if seal is None:
                if has_file or last:
                    _restore_scanned(index, sid, scan_keys(handle, size), now_ms)
                    scanned += 1
                continue
            if not has_file:
                continue  # sealed with no key in the window (Rule 1)
            got = _read_key_file(layer, directory, sid, seal.data_end, seal.record_count, cutoff)
        finally:
            handle.close()
        if isinstance(got, str):
            ignored += 1
            scanned += 1
            with _opened(layer, directory, sid) as h:
                _restore_scanned(index, sid, scan_keys(h, h.size()), now_ms)
            continue
        if got is not None:
            read += 1
            for key, off, t in got:
                index.restore(key, Position(sid, off), t)
    index.expire(now_ms)
    return RebuildInfo(len(index), read, scanned, ignored)


@contextmanager
def _opened(layer: FileLayer, directory: str, segment_id: int) -> Iterator[FileHandle]:
    handle = layer.open_read(os.path.join(directory, segment_name(segment_id)))
    try:
        yield handle
    finally:
        handle.close()


def _restore_scanned(index: DedupeIndex, segment_id: int, found: list[tuple[int, bytes]], now_ms: int) -> None:
    for off, key in found:
        index.restore(key, Position(segment_id, off), now_ms)  # Rule 3


def _read_key_file(
    layer: FileLayer, directory: str, segment_id: int, data_end: int, record_count: int, cutoff: int
) -> list[tuple[bytes, int, int]] | str | None:
    """The entries of a segment's key file; None when all are past the window; a reason if it is invalid."""
    try:
        handle = layer.open_read(os.path.join(directory, key_file_name(segment_id)))
    except FileNotFoundError:
        return "key file vanished"
    try:
        head = decode_key_file_head(handle.pread(KEY_FILE_HEADER_SIZE, 0), segment_id, data_end, record_count)
        if isinstance(head, str):
            return head
        if head.newest_ms < cutoff:
            return None
        size = handle.size()
        return decode_key_file_entries(head, _read_all(handle, KEY_FILE_HEADER_SIZE, size))
    finally:
        handle.close()


def _read_all(handle: FileHandle, start: int, end: int) -> bytes:
    parts, pos = [], start
    while pos < end:
        chunk = handle.pread(end - pos, pos)
        if not chunk:
            break
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts)


def scan_keys(handle: FileHandle, size: int) -> list[tuple[int, bytes]]:
    """``(offset, idempotency key)`` of the keyed records of a segment, up to its first non-record.

    Each frame's CRC is checked before its key is used (FORMAT.md, reading rules).
    """
    mapper = getattr(handle, "map", None)
    if mapper is not None:
        with mapper() as view:
            return keys_in(view, HEADER_SIZE)
    return keys_in(_read_all(handle, 0, size), HEADER_SIZE)


def keys_in(buf: BytesLike, start: int) -> list[tuple[int, bytes]]:
    """``(offset, key)`` of the keyed frames of ``buf`` from ``start`` to its first non-record (pure)."""
    mv = buf if type(buf) is memoryview else memoryview(buf)
    n = len(buf)
    out: list[tuple[int, bytes]] = []
    off = start
    while off < n:
        lay = frame_layout(buf, off, n, FORMAT_MAX_FRAME)
        if type(lay) is int:
            break
        flags, end = lay[0], lay[4]  # type: ignore[index]
        if crc32c(mv[off + 4 : end]) != int.from_bytes(mv[off : off + 4], "little") or flags & FLAG_SEAL:
            break
        if flags & FLAG_IDEMPOTENCY:
            key = idempotency_key_of(buf, lay)  # type: ignore[arg-type]
            assert key is not None
            out.append((off, key))
        off = end
    return out
