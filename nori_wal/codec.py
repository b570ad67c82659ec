"""Record framing: encode records to bytes and decode bytes back (pure, no I/O).

Layout of one frame (see docs/FORMAT.md)::

    u32 LE   crc32c of every byte after this field, to the end of the frame
    varint   key_len
    varint   value_len          (stored length: after compression)
    u8       flags              bit0 tombstone, bit1 ttl, bits2-3 compression, bit4 idempotency key, bit7 seal
    [varint  ttl_ms]            only when the ttl flag is set
    key      key_len bytes
    value    value_len bytes    with bit4: u8 id_len (1..128), id_len bytes of idempotency key, then the
                                stored value (value_len counts all three)

Rules:
1. Only this module decides whether bytes are a record, "need more bytes" (a
   torn tail) or corrupt. It never raises for damaged input.
2. Lengths are untrusted: they are checked against ``limit`` and against the
   bytes present before anything is sliced or allocated; a value is only
   decompressed after its checksum passed, into a buffer no larger than ``limit``.
   A TTL is untrusted too: one larger than a timedelta holds is corrupt.
3. The CRC covers the header too, so a torn length or flag byte cannot pass.
4. Seven zero bytes can never be a valid frame, so a zero-filled tail reads as
   ``Zeroed`` ("end"), not as corruption.
5. Encoding refuses what decoding would reject: a value too large to decompress
   within FORMAT_MAX_FRAME raises RecordTooLargeError before it is compressed.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Union

import lz4.block
import zstandard
from crc32c import crc32c

from .errors import InvalidRecordError, RecordTooLargeError, WalError
from .position import Position
from .record import MAX_IDEMPOTENCY_KEY, BytesLike, Compression, Record, check_idempotency_key, ttl_to_ms

FLAG_TOMBSTONE = 0x01
FLAG_TTL = 0x02
COMPRESSION_SHIFT = 2
COMPRESSION_MASK = 0x0C
FLAG_IDEMPOTENCY = 0x10  # the value region starts with the record's idempotency key (u8 length, bytes)
FLAG_SEAL = 0x80  # writer-internal end-of-segment marker; never accepted from producers
RESERVED_FLAGS = 0x60

MIN_FRAME_SIZE = 7  # crc + key_len + value_len + flags
MAX_VARINT_BYTES = 10  # a u64 in LEB128
MAX_VARINT_VALUE = 2**64 - 1  # a varint above this (a 10th byte over 1) is corrupt, not a huge length
FORMAT_MAX_FRAME = 2**31 - 1  # no frame may be larger, whatever the segment size
ZERO_COPY_MIN = 64 * 1024  # values at least this large are returned as memoryviews
# The largest ttl_ms a frame may carry: datetime.timedelta holds no more (timedelta.max in whole ms,
# ~2.7 million years). A larger varint fits MAX_VARINT_BYTES but cannot become a Record, so it is corrupt.
MAX_TTL_MS = timedelta.max // timedelta(milliseconds=1)
# Readers decompress a value into at most FORMAT_MAX_FRAME bytes (their default limit), and LZ4
# takes at most LZ4_MAX_INPUT_SIZE (lz4.h) bytes: a larger value is refused before it is compressed.
MAX_DECOMPRESSED_VALUE = FORMAT_MAX_FRAME
LZ4_MAX_INPUT = 0x7E000000

_U32 = struct.Struct("<I")
_pack_u32 = _U32.pack
_new = tuple.__new__  # a NamedTuple built from a tuple, without its __new__ (put_run)
_MS = timedelta(milliseconds=1)
_COMPRESSIONS = tuple(Compression)  # by value (no Enum call per record)
_PUT_HEAD = struct.Struct("<IBBBB")  # crc, key length, and 3 bytes: the value length's varint and the flags
PUT_OVERHEAD = 4 + 1 + 3 + 1 + 0x7F  # the most a frame put_run takes holds besides its value
_BYTE = [bytes((i,)) for i in range(256)]  # one-byte bytes objects, made once
_SEAL_BODY = struct.Struct("<QQ")  # record_count, data_end (offset of the seal frame)
SEAL_FRAME_SIZE = MIN_FRAME_SIZE + _SEAL_BODY.size

# Status codes of the fast, allocation-free helpers (negative; a frame end is >= 0).
NEED_MORE = -1
CORRUPT = -2
ZEROED = -3

LZ4_MAX_RATIO = 255  # an LZ4 block never expands more than this (one byte: 255 more of a match)
ZSTD_MAX_RATIO = 32768  # nor a zstd frame (a 4-byte RLE block holds at most 128 KiB)


class _ZstdContexts(threading.local):
    """One zstd compressor and decompressor per thread: their contexts are not thread-safe."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=3, write_content_size=True)
        self.decompressor = zstandard.ZstdDecompressor()


_ZSTD = _ZstdContexts()


# -- results of decode_record (h11-style: an event, or a sentinel-like value) ----------


@dataclass(frozen=True)
class Decoded:
    """A whole, checksummed record and the offset just past its frame."""

    record: Record
    end: int


@dataclass(frozen=True)
class NeedMore:
    """The bytes end inside a frame: a torn tail, or a record still being written.

    ``frame_size`` is the whole frame's size when the header was readable.
    """

    frame_size: int | None = None


@dataclass(frozen=True)
class Zeroed:
    """Zero bytes where a frame should start: the end of what was written."""


@dataclass(frozen=True)
class Corrupt:
    """Bytes that cannot be a valid frame: bad checksum, flags or lengths."""

    reason: str


@dataclass(frozen=True)
class Seal:
    """The end-of-segment marker the writer puts after a segment's last record."""

    record_count: int
    data_end: int
    end: int


DecodeResult = Union[Decoded, NeedMore, Zeroed, Corrupt, Seal]


# -- encoding ---------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def check_value_size(size: int, compression: int) -> None:
    """Raise RecordTooLargeError if a ``size``-byte value cannot be stored under ``compression``.

    A compressed frame is small, so the frame limit does not catch a huge value;
    acknowledged, it would stop every reader (they decompress within a limit).
    """
    if compression == Compression.NONE:
        return  # the frame itself is checked against FORMAT_MAX_FRAME
    if size > MAX_DECOMPRESSED_VALUE:
        raise RecordTooLargeError(
            f"a {Compression(compression).name} value of {size} bytes exceeds the "
            f"{MAX_DECOMPRESSED_VALUE} bytes readers decompress a value into"
        )
    if compression == Compression.LZ4 and size > LZ4_MAX_INPUT:
        raise RecordTooLargeError(f"an LZ4 value of {size} bytes exceeds the {LZ4_MAX_INPUT} bytes LZ4 compresses")


def compress_value(value: BytesLike, compression: Compression) -> BytesLike:
    """The stored form of ``value`` under ``compression``.

    Raises RecordTooLargeError for a value too large to store compressed, and
    WalError if the compressor fails (only WalError subclasses cross the API).
    """
    if compression == Compression.NONE:
        return value
    check_value_size(len(value), compression)
    try:
        if compression == Compression.LZ4:
            return bytes(lz4.block.compress(value, store_size=True))
        if compression == Compression.ZSTD:
            return _ZSTD.compressor.compress(value)
    except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
        name = Compression(compression).name
        raise WalError(f"{name} compression of a {len(value)}-byte value failed: {exc}") from exc
    raise ValueError(f"unknown compression {compression!r}")


def encode_record(record: Record, prefix: bytes = b"", key_override: bytes | None = None) -> bytes:
    """The frame bytes of ``record`` (framing, compression and CRC32C), after ``prefix``.

    ``key_override``: an idempotency key the frame carries instead of the record's
    own (a retrying client keys every record it sends, ``client/retry.py``,
    without making the keyed Record first).

    ``prefix`` (a request header, say) shares the frame's buffer, so a producer
    copies the value once: the CRC is computed over the parts, then one join.

    Raises InvalidRecordError (a ValueError) for anything that is not a valid
    Record (wrong types, an unknown compression, a ttl out of range) and
    RecordTooLargeError for one the format cannot hold.
    """
    try:
        key, value, tombstone, ttl, compression, idem = record
        if key_override is not None:
            idem = key_override
        if not compression and ttl is None:
            # Fast path (producers frame every record): one- and two-byte lengths, no TTL, no compression.
            kl, vl = len(key), len(value)
            if idem is None:
                if kl < 0x80 and vl < 0x4000:
                    flag = FLAG_TOMBSTONE if tombstone else 0
                    head = bytes((kl, vl, flag)) if vl < 0x80 else bytes((kl, (vl & 0x7F) | 0x80, vl >> 7, flag))
                    if not prefix:  # two small copies beat two CRC calls and a join (the embedded Wal)
                        body = head + key + value
                        return _pack_u32(crc32c(body)) + body
                    head += key
                    return b"".join((prefix, _pack_u32(crc32c(value, crc32c(head))), head, value))
            elif type(idem) is bytes and 0 < (il := len(idem)) <= 128:  # (MAX_IDEMPOTENCY_KEY)
                # A keyed record: its value region starts with the key block (u8 length, then the key).
                vl += il + 1
                if kl < 0x80 and vl < 0x4000:
                    flag = 0x11 if tombstone else 0x10  # (FLAG_IDEMPOTENCY, | FLAG_TOMBSTONE)
                    head = bytes((kl, vl, flag)) if vl < 0x80 else bytes((kl, (vl & 0x7F) | 0x80, vl >> 7, flag))
                    if not prefix:  # one join: fewer copies than concatenating five parts
                        body = b"".join((head, key, _BYTE[il], idem, value))
                        return _pack_u32(crc32c(body)) + body
                    head = b"".join((head, key, _BYTE[il], idem))
                    return b"".join((prefix, _pack_u32(crc32c(value, crc32c(head))), head, value))
        flags = (compression << COMPRESSION_SHIFT) | (FLAG_TOMBSTONE if tombstone else 0)
        stored = compress_value(value, compression) if compression else value
        block = b""  # a keyed frame's value region starts with its idempotency block
        if idem is not None:
            idem = check_idempotency_key(idem)
            block = bytes((len(idem),)) + idem
            flags |= FLAG_IDEMPOTENCY
        if ttl is None:
            head = _varint(len(key)) + _varint(len(block) + len(stored)) + bytes((flags,))
        else:
            ttl_ms = ttl_to_ms(ttl)
            if ttl_ms > MAX_TTL_MS:  # only a ttl that is no timedelta can be: decoding would call it corrupt
                raise ValueError(f"ttl of {ttl_ms} ms exceeds the largest a frame holds ({MAX_TTL_MS} ms)")
            head = _varint(len(key)) + _varint(len(block) + len(stored)) + bytes((flags | FLAG_TTL,)) + _varint(ttl_ms)
        head += key
        if block:
            head += block
        if len(head) + len(stored) + 4 > FORMAT_MAX_FRAME:
            raise RecordTooLargeError(
                f"record of {len(head) + len(stored) + 4} bytes exceeds the format limit of {FORMAT_MAX_FRAME}"
            )
        return b"".join((prefix, _pack_u32(crc32c(stored, crc32c(head))), head, stored))
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # (a try costs nothing in 3.11+)
        raise InvalidRecordError(
            f"not a valid Record ({type(exc).__name__}: {exc}); make one with Record.put, "
            f"Record.put_with_ttl or Record.delete"
        ) from exc


def encode_with_key(record: Record, idem: bytes, prefix: bytes = b"") -> bytes:
    """``encode_record`` of ``record`` carrying ``idem`` (1..128 bytes) instead of its own key."""
    return encode_record(record, prefix, idem)


def encode_seal(record_count: int, data_end: int) -> bytes:
    """The seal frame closing a segment whose records end at ``data_end``."""
    body = bytes((0, _SEAL_BODY.size, FLAG_SEAL)) + _SEAL_BODY.pack(record_count, data_end)
    return _U32.pack(crc32c(body)) + body


# -- decoding ---------------------------------------------------------------------------


def parse_header(buf: BytesLike, off: int, n: int) -> tuple[int, int, int, int, int] | int:
    """Parse the header of the frame at ``off`` (bytes up to ``n`` present); the one header parser.

    Returns ``(flags, ttl_ms, key_start, value_start, declared_end)``, or NEED_MORE
    when the header itself is cut off, or CORRUPT when no bytes that follow can
    make it valid: a varint over 10 bytes or over 64 bits, or a key or value
    length over FORMAT_MAX_FRAME (seen even in a header cut short, so a huge
    length never reads as "not yet"). Flags, TTL range and ``limit`` are the
    caller's (``frame_layout``).
    """
    p = off + 4
    if p + 3 > n:
        return NEED_MORE
    vals = [0, 0, -1]
    for i in (0, 1, 2):
        if i == 2:
            if p >= n:
                return NEED_MORE
            flags = buf[p]
            p += 1
            if not flags & FLAG_TTL:
                break
        if p >= n:
            return NEED_MORE
        b = buf[p]
        p += 1
        if b < 0x80:
            vals[i] = b
            continue
        cap = MAX_VARINT_VALUE if i == 2 else FORMAT_MAX_FRAME
        v, shift = b & 0x7F, 7
        while True:
            if p >= n:
                return NEED_MORE
            b = buf[p]
            p += 1
            v |= (b & 0x7F) << shift
            if v > cap:
                return CORRUPT
            if b < 0x80:
                break
            shift += 7
            if shift >= 7 * MAX_VARINT_BYTES:
                return CORRUPT
        vals[i] = v
    key_len, value_len, ttl_ms = vals
    return flags, ttl_ms, p, p + key_len, p + key_len + value_len


def fast_frame(buf: BytesLike, off: int, n: int, limit: int, flags_ok: bytes) -> tuple[int, int] | None:
    """``(value_start, end)`` of the common frame at ``off`` if it is whole and valid, else None.

    The fast path of ``decode_record`` for hot loops (the scan, the reader, the
    writer's one-record check): a key under 128 bytes, a value length in at most
    three varint bytes, ``flags_ok[flags]`` 1 (or 2: a keyed frame, whose key
    block is checked too; ``value_start`` is then the block's). None means "ask
    ``frame_layout``/``decode_record``", never "invalid": on every input it
    accepts only what ``decode_record`` accepts as a record ending at ``end``
    (property-tested).
    """
    p = off + 4
    if p + 3 > n:
        return None
    klen = buf[p]
    if klen >= 0x80:
        return None
    vb = buf[p + 1]
    if vb < 0x80:
        vlen, fp = vb, p + 2
    else:
        vb1 = buf[p + 2]
        if vb1 < 0x80:
            vlen, fp = (vb & 0x7F) | (vb1 << 7), p + 3
        elif p + 4 < n and buf[p + 3] < 0x80:
            vlen, fp = (vb & 0x7F) | ((vb1 & 0x7F) << 7) | (buf[p + 3] << 14), p + 4
        else:
            return None
    vs = fp + 1 + klen
    e = vs + vlen
    if fp >= n or flags_ok[buf[fp]] != 1:
        # A keyed frame's value region must start with a whole key block (frame_layout's check).
        if fp >= n or flags_ok[buf[fp]] != 2 or not (vlen and e <= n and 0 < buf[vs] < vlen):
            return None
        if buf[vs] > MAX_IDEMPOTENCY_KEY:
            return None
    if e > n or e - off > limit:
        return None
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if crc32c(mv[p:e]) != _U32.unpack_from(buf, off)[0]:
        return None
    return vs, e


def fast_run(
    buf: BytesLike, off: int, n: int, limit: int, flags_ok: bytes, keys: list[int | bytes] | None = None
) -> tuple[int, int, int]:
    """``(end, frames, compressed)`` of the run of consecutive ``fast_frame`` frames from ``off``.

    The same decision as calling ``fast_frame`` frame after frame (property-tested),
    in one loop: a writer validates a batch of a hundred records per request, and a
    function call per record was a measurable part of its CPU. ``compressed``
    counts the run's frames whose flags say compressed. ``frames == 0``: the frame
    at ``off`` is not a fast one (ask ``frame_layout``). With ``keys``, each keyed
    frame of the run adds its offset and its idempotency key to it (found in the
    same walk: the writer's dedupe needs no second parse).
    """
    mv = buf if type(buf) is memoryview else memoryview(buf)
    plain = type(buf) is bytes  # (a slice of bytes is bytes; of anything else, a copy is taken)
    unpack = _U32.unpack_from
    frames = compressed = 0
    while True:
        p = off + 4
        if p + 3 > n:
            break
        klen = buf[p]
        if klen >= 0x80:
            break
        vb = buf[p + 1]
        if vb < 0x80:
            vlen, fp = vb, p + 2
        else:
            vb1 = buf[p + 2]
            if vb1 < 0x80:
                vlen, fp = (vb & 0x7F) | (vb1 << 7), p + 3
            elif p + 4 < n and buf[p + 3] < 0x80:
                vlen, fp = (vb & 0x7F) | ((vb1 & 0x7F) << 7) | (buf[p + 3] << 14), p + 4
            else:
                break
        e = fp + 1 + klen + vlen
        if fp >= n or flags_ok[buf[fp]] != 1:
            # A keyed frame (2 in the table): check its key block as frame_layout does (u8 length 1..128,
            # within the value region) and take its key. (Unkeyed frames pay nothing for this branch.)
            if fp >= n or flags_ok[buf[fp]] != 2 or e > n or not vlen:
                break
            ks = e - vlen + 1
            if not 0 < (il := buf[ks - 1]) < vlen or il > 128 or e - off > limit:
                break
            if crc32c(mv[p:e]) != unpack(buf, off)[0]:
                break
            if keys is not None:
                key = buf[ks : ks + il]
                keys += (off, key if plain else bytes(key))  # type: ignore[arg-type]
        elif e > n or e - off > limit or crc32c(mv[p:e]) != unpack(buf, off)[0]:
            break
        frames += 1
        if buf[fp] & COMPRESSION_MASK:
            compressed += 1
        off = e
    return off, frames, compressed


def put_run(
    buf: bytes, off: int, limit: int, max_value: int, count: int, seg: int, base: int
) -> tuple[list[tuple[Record, Position]], int]:
    """``(pairs, end)``: up to ``count`` plain puts from ``off``, as ``(record, position)``, and where they end.

    The frames ``fast_frame(..., PUT_FLAGS)`` takes one after the other while
    their values are under ``max_value`` and ``limit - PUT_OVERHEAD`` (so the
    frame is within ``limit``) and their first 8 bytes are in ``buf``
    (property-tested, with ``decode_record``'s records), built in the same
    loop: the reader's fast path, where a record costs one pass of this loop
    and no call. ``buf[0]`` is at offset ``base`` of segment ``seg``.
    """
    n = len(buf)
    mv = memoryview(buf)
    head, new, none = _PUT_HEAD.unpack_from, _new, Compression.NONE
    max_value = min(max_value, limit - PUT_OVERHEAD + 1)
    pairs: list[tuple[Record, Position]] = []
    try:
        for _ in range(count):
            crc, klen, vb, vb1, b2 = head(buf, off)
            if klen >= 0x80:
                break
            if vb < 0x80:
                vlen, flags, ks = vb, vb1, off + 7
            elif vb1 < 0x80:
                vlen, flags, ks = (vb & 0x7F) | (vb1 << 7), b2, off + 8
            elif b2 < 0x80:
                vlen, flags, ks = (vb & 0x7F) | ((vb1 & 0x7F) << 7) | (b2 << 14), buf[off + 8], off + 9
            else:
                break
            if flags or vlen >= max_value:
                break
            vs = ks + klen
            e = vs + vlen
            if e > n or crc32c(mv[off + 4 : e]) != crc:
                break
            pairs.append(
                (new(Record, (buf[ks:vs], buf[vs:e], False, None, none, None)), new(Position, (seg, base + off)))
            )
            off = e
    except (struct.error, IndexError):  # a header cut off by the end of ``buf``
        pass
    return pairs, off


# Flag tables for ``fast_frame``: 1 where a flags byte is taken by the fast path, 2 where it is a keyed
# frame's (the fast paths then check its key block as frame_layout does), 0 elsewhere.
# Records without TTL or seal, with a valid compression (the scan: values are not decompressed there).
SCAN_FLAGS = bytes(
    (2 if f & FLAG_IDEMPOTENCY else 1)
    if not f & (RESERVED_FLAGS | FLAG_TTL | FLAG_SEAL) and (f & COMPRESSION_MASK) != COMPRESSION_MASK
    else 0
    for f in range(256)
)
# Of those, the uncompressed ones without a key (a compressed value needs a decompression check; a
# reader's fast path builds unkeyed Records).
PLAIN_FLAGS = bytes(ok if not f & (COMPRESSION_MASK | FLAG_IDEMPOTENCY) else 0 for f, ok in enumerate(SCAN_FLAGS))
# An uncompressed keyed record without TTL (the writer's one-record keyed check).
KEYED_FLAGS = bytes(2 if f in (FLAG_IDEMPOTENCY, FLAG_IDEMPOTENCY | FLAG_TOMBSTONE) else 0 for f in range(256))
# A plain put: flags 0 (the reader's fast path builds the Record itself).
PUT_FLAGS = bytes(1 if f == 0 else 0 for f in range(256))


def frame_layout(buf: BytesLike, off: int, n: int, limit: int) -> tuple[int, int, int, int, int] | int:
    """Parse and bound-check the header of the frame at ``off`` (bytes up to ``n`` are present).

    Returns ``(flags, ttl_ms, key_start, value_start, frame_end)`` or a status:
    NEED_MORE, CORRUPT or ZEROED. Does not check the CRC (see ``frame_end``).
    """
    lay = parse_header(buf, off, n)
    if type(lay) is int:
        if not any(buf[off : min(n, off + MIN_FRAME_SIZE)]):
            return ZEROED
        return lay
    flags, ttl_ms, _ks, vs, end = lay  # type: ignore[misc]
    if (
        end - off > limit
        or flags & RESERVED_FLAGS
        or (flags & COMPRESSION_MASK) == COMPRESSION_MASK
        or ttl_ms > MAX_TTL_MS
    ):  # ttl_ms is -1 without a TTL
        return ZEROED if not any(buf[off : off + MIN_FRAME_SIZE]) else CORRUPT
    if end > n:
        return ZEROED if not any(buf[off : off + MIN_FRAME_SIZE]) else NEED_MORE
    if flags & FLAG_IDEMPOTENCY and not _idempotency_block_ok(buf, vs, end):
        return CORRUPT
    return lay


def _idempotency_block_ok(buf: BytesLike, vs: int, end: int) -> bool:
    """Whether a keyed frame's value region (``vs``..``end``, present) starts with a whole, valid block."""
    return vs < end and 1 <= buf[vs] <= MAX_IDEMPOTENCY_KEY and vs + 1 + buf[vs] <= end


def stored_value_start(buf: BytesLike, flags: int, vs: int) -> int:
    """Where the stored value begins in a frame whose value region begins at ``vs`` (after any key block)."""
    return vs + 1 + buf[vs] if flags & FLAG_IDEMPOTENCY else vs


def idempotency_key_of(buf: BytesLike, lay: tuple[int, int, int, int, int]) -> bytes | None:
    """The idempotency key of the frame ``frame_layout`` returned ``lay`` for (None if it has none)."""
    flags, _ttl, _ks, vs, _end = lay
    if not flags & FLAG_IDEMPOTENCY:
        return None
    return bytes(buf[vs + 1 : vs + 1 + buf[vs]])


def frame_end(buf: BytesLike, off: int, n: int, limit: int = FORMAT_MAX_FRAME) -> int:
    """End offset of the valid frame at ``off``, or NEED_MORE / CORRUPT / ZEROED."""
    lay = frame_layout(buf, off, n, limit)
    if type(lay) is int:
        return lay
    end = lay[4]  # type: ignore[index]
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if crc32c(mv[off + 4 : end]) != _U32.unpack_from(buf, off)[0]:
        return ZEROED if not any(buf[off : off + MIN_FRAME_SIZE]) else CORRUPT
    return end


def decompress_value(stored: BytesLike, compression: int, limit: int) -> bytes | None:
    """The original value, or None when ``stored`` is not a valid ``compression`` payload.

    Valid means exactly one LZ4 block (size-prefixed) or one Zstd frame with its
    content size, nothing after it, decoding to that size. The output size is
    checked against ``limit`` before anything is allocated.
    """
    try:
        # A CRC is no signature, so the size a value claims is also checked against what its
        # stored bytes can expand to (LZ4 < 255x, zstd < 32768x: a 4-byte RLE block makes 128 KiB):
        # the decompressors allocate the claimed size up front.
        if compression == Compression.LZ4:
            if len(stored) < 4 or _U32.unpack_from(stored, 0)[0] > min(limit, LZ4_MAX_RATIO * len(stored)):
                return None
            return bytes(lz4.block.decompress(stored))  # (the whole block must decode to the stored size)
        if compression == Compression.ZSTD:
            size = zstandard.frame_content_size(stored)
            if size < 0 or size > min(limit, ZSTD_MAX_RATIO * len(stored)):
                return None
            # Exactly one frame: trailing bytes or a second frame make the value invalid, not ignored.
            dobj = _ZSTD.decompressor.decompressobj()
            out = dobj.decompress(stored)
            if not dobj.eof or dobj.unused_data or len(out) != size:
                return None
            return out
    except (lz4.block.LZ4BlockError, zstandard.ZstdError, ValueError):
        return None
    return None


def build_record(buf: BytesLike, lay: tuple[int, int, int, int, int], limit: int) -> Record | str:
    """The Record of a checksummed frame, or a reason string if its value will not decompress."""
    flags, ttl_ms, ks, vs, end = lay
    key = bytes(buf[ks:vs])
    idem = None
    if flags & FLAG_IDEMPOTENCY:  # (frame_layout checked the block)
        idem = bytes(buf[vs + 1 : vs + 1 + buf[vs]])
        vs += 1 + buf[vs]
    if end - vs >= ZERO_COPY_MIN:
        mv = buf if type(buf) is memoryview else memoryview(buf)
        value: BytesLike = mv[vs:end].toreadonly()
    else:
        value = bytes(buf[vs:end])
    comp = (flags & COMPRESSION_MASK) >> COMPRESSION_SHIFT
    if comp:
        raw = decompress_value(value, comp, limit)
        if raw is None:
            return f"value does not decompress as {Compression(comp).name}"
        value = raw
    ttl = _MS * ttl_ms if ttl_ms >= 0 else None  # (exact: whole milliseconds, at most MAX_TTL_MS)
    return _new(Record, (key, value, bool(flags & FLAG_TOMBSTONE), ttl, _COMPRESSIONS[comp], idem))


def decode_record(buf: BytesLike, offset: int = 0, *, limit: int = FORMAT_MAX_FRAME) -> DecodeResult:
    """Decode the frame at ``offset``: Decoded, Seal, NeedMore, Zeroed or Corrupt; never raises."""
    n = len(buf)
    lay = frame_layout(buf, offset, n, limit)
    if lay == ZEROED:
        return Zeroed()
    if lay == NEED_MORE:
        return NeedMore(_declared_size(buf, offset, n))
    if lay == CORRUPT:
        return Corrupt(_corrupt_reason(buf, offset, n, limit))
    flags, _ttl, ks, vs, end = lay  # type: ignore[misc]
    mv = buf if type(buf) is memoryview else memoryview(buf)
    if crc32c(mv[offset + 4 : end]) != _U32.unpack_from(buf, offset)[0]:
        if not any(buf[offset : offset + MIN_FRAME_SIZE]):
            return Zeroed()
        return Corrupt("checksum mismatch")
    if flags & FLAG_SEAL:
        if vs != ks or end - vs != _SEAL_BODY.size or flags != FLAG_SEAL:
            return Corrupt("malformed seal")
        count, data_end = _SEAL_BODY.unpack_from(buf, vs)
        return Seal(count, data_end, end)
    rec = build_record(buf, lay, limit)  # type: ignore[arg-type]
    if isinstance(rec, str):
        return Corrupt(rec)
    return Decoded(rec, end)


def _corrupt_reason(buf: BytesLike, off: int, n: int, limit: int) -> str:
    """Why ``frame_layout`` called the frame at ``off`` corrupt (its checks, in words)."""
    lay = parse_header(buf, off, n)
    if type(lay) is not tuple:
        return (
            "a length or ttl varint out of range in the header (over 10 bytes or 64 bits, or a "
            "length over the format limit)"
        )
    flags, ttl_ms, _ks, _vs, end = lay
    if end - off > limit:
        return f"frame of {end - off} bytes exceeds the limit of {limit}"
    if ttl_ms > MAX_TTL_MS:
        return f"ttl of {ttl_ms} ms exceeds the largest a timedelta holds ({MAX_TTL_MS} ms)"
    if flags & FLAG_IDEMPOTENCY and end <= n and not _idempotency_block_ok(buf, lay[3], end):
        return f"invalid idempotency key block (length must be 1..{MAX_IDEMPOTENCY_KEY} within the value)"
    return f"invalid flags 0x{flags:02x}"


def _declared_size(buf: BytesLike, off: int, n: int) -> int | None:
    """The frame size its header declares, when the header is complete (for readers' refills)."""
    lay = parse_header(buf, off, n)
    return lay[4] - off if type(lay) is tuple else None
