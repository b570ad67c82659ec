"""The wire protocol between producers and the writer process (pure: no sockets, no files).

Every message is a ZeroMQ multipart message; the ROUTER's identity frame is
the transport's business and does not appear here. See docs/PROTOCOL.md.

Request  = ``[header]`` or ``[header, payload]``
    header  = msgpack array ``[VERSION, op, request_id, *args]``
    payload = record frames exactly as ``codec.encode_record`` makes them, back to back
              (APPEND only; at most ``MAX_PAYLOAD_BYTES``)

    op              args                      payload   ok result
    APPEND    (1)   record_count              frames    runs: flat [segment_id, offset, count, ...]
    SYNC      (2)   -                         -         [segment_id, offset]   durable position
    POSITION  (3)   -                         -         [segment_id, offset]   where the next record goes
    DELETE    (4)   segment_id, offset        -         deleted segment count
    INFO      (5)   -                         -         map: version, pid, policy, position, durable, ...
    GC        (6)   segment_id, offset        -         map: DELETE's work, and what cursors held back

Reply    = ``[reply]``: msgpack array ``[VERSION, request_id, status, result]``
    status OK (0): result as in the table
    status ERR (1): result = ``[error_name, message]``; error_name is a WalError subclass name

Rules:
1. Producers do the per-record work (framing, CRC32C, compression); a request
   carries one opaque payload. The writer validates it with one ``scan_frames``
   call (``check_payload``): the frames must end exactly at the payload's end,
   hold exactly ``record_count`` records, carry no seal or reserved flags and
   each fit in a segment. A bad payload gets an ERR reply and is never written.
2. An APPEND's reply gives runs ``(segment_id, offset, count)``: the client
   knows its own frame lengths, so it computes every record's Position with
   ``positions_from_runs``; the writer does no per-record work to answer. A
   payload is one unit that never spans segments (it rolls first when it does
   not fit), except a payload larger than a segment can hold, which the writer
   splits at frame boundaries (``split_units``): then it has several runs.
3. Only this module knows the error names on the wire (``ERRORS``): the
   writer sends ``error_to_wire(exc)`` and the client raises
   ``error_from_wire(name, message)``.
4. Nothing here trusts a length: the header is size-capped before it is
   unpacked and the payload before it is scanned.
"""

from __future__ import annotations

import enum
import struct
from itertools import accumulate, islice, repeat
from typing import Any, Callable, NamedTuple, Sequence, Union

import msgpack

from .codec import (
    COMPRESSION_MASK,
    COMPRESSION_SHIFT,
    FORMAT_MAX_FRAME,
    MIN_FRAME_SIZE,
    SEAL_FRAME_SIZE,
    decompress_value,
    parse_header,
    stored_value_start,
)
from .errors import (
    CorruptionError,
    DedupeCapacityError,
    PositionPastEndError,
    ProtocolError,
    RecordTooLargeError,
    WalClosedError,
    WalError,
    WalIOError,
    WalLockedError,
    WriterUnavailableError,
)
from .position import Position
from .record import BytesLike, Compression
from .retention import Expired, GcPlan, Hold
from .scan import ScanResult, Stop, scan_frames

VERSION = 1
# Bytes of record frames in one APPEND request: our clients split batches at this size, and it bounds
# what ZeroMQ may hold per queued request in the writer (writer_proc/budget.py).
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 256  # a header is a handful of small integers
MAX_MESSAGE_BYTES = MAX_PAYLOAD_BYTES + 64 * 1024  # the writer's ZMQ_MAXMSGSIZE (per frame)


class Op(enum.IntEnum):
    APPEND = 1
    SYNC = 2
    POSITION = 3
    DELETE = 4
    INFO = 5
    GC = 6


OK = 0
ERR = 1

# Rule 3: the one table of error names on the wire.
ERRORS: dict[str, type[WalError]] = {
    cls.__name__: cls
    for cls in (
        WalError,
        CorruptionError,
        WalLockedError,
        WalClosedError,
        RecordTooLargeError,
        WalIOError,
        WriterUnavailableError,
        ProtocolError,
        PositionPastEndError,
        DedupeCapacityError,
    )
}


def error_to_wire(exc: BaseException) -> tuple[str, str]:
    """The (name, message) that carries ``exc`` in an ERR reply."""
    for cls in type(exc).__mro__:
        if cls.__name__ in ERRORS and ERRORS[cls.__name__] is cls:
            return cls.__name__, str(exc)
    return "WalError", f"{type(exc).__name__}: {exc}"


def error_from_wire(name: str, message: str) -> WalError:
    """The WalError subclass an ERR reply names (WalError for an unknown name)."""
    cls = ERRORS.get(name, WalError)
    return cls(f"writer: {message}")


# -- requests -------------------------------------------------------------------------------

_packb: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack


# An APPEND header in one fixed msgpack shape: fixarray(4), 1, 1, uint64 request_id, uint32 record_count.
# Any msgpack encoding of the same array is valid; this one is what our clients send and what the
# writer's fast path recognises with one struct call (``append_header``). Public for a producer's hot
# path: ``APPEND_HEADER.pack(APPEND_PREFIX, request_id, APPEND_COUNT_TAG, record_count)``.
APPEND_HEADER = struct.Struct(">4sQBI")  # the fixed bytes travel as one field: fewer to check
APPEND_PREFIX = bytes((0x94, VERSION, 1, 0xCF))  # fixarray(4), version, op APPEND, uint64 tag
APPEND_COUNT_TAG = 0xCE  # uint32 tag (the record count follows)
APPEND_HEADER_SIZE = APPEND_HEADER.size


def encode_append(request_id: int, record_count: int) -> bytes:
    """The header of an APPEND request: send the payload as the second frame, or after it in one frame."""
    if 0 <= request_id < 2**64 and 0 <= record_count < 2**32:
        return APPEND_HEADER.pack(APPEND_PREFIX, request_id, APPEND_COUNT_TAG, record_count)
    return _packb([VERSION, 1, request_id, record_count])


def append_header(head: BytesLike) -> tuple[int, int] | None:
    """(request_id, record_count) of an APPEND header in ``encode_append``'s shape; None for any other.

    The writer's per-request fast path; None sends the header through ``decode_request``.
    """
    return _fixed_append_header(head) if len(head) == APPEND_HEADER_SIZE else None


def compact_append(msg: BytesLike) -> tuple[int, int] | None:
    """(request_id, record_count) of a one-frame APPEND, ``encode_append``'s header then the payload; else None.

    The compact form: a producer builds header and frames in one buffer and
    sends one frame per request; the writer takes the payload as a view past the
    header. A lone frame that does not start so is a control request (msgpack).
    """
    return _fixed_append_header(msg) if len(msg) > APPEND_HEADER_SIZE else None


def _fixed_append_header(buf: BytesLike) -> tuple[int, int] | None:
    """(request_id, record_count) if ``buf`` starts with ``encode_append``'s fixed shape (long enough)."""
    prefix, rid, tag, count = APPEND_HEADER.unpack_from(buf)
    return (rid, count) if prefix == APPEND_PREFIX and tag == APPEND_COUNT_TAG else None


def encode_request(op: Op, request_id: int, *args: int) -> bytes:
    """The header of a request without payload (SYNC, POSITION, DELETE, INFO)."""
    return _packb([VERSION, int(op), request_id, *args])


class Append(NamedTuple):
    request_id: int
    record_count: int
    payload: BytesLike


class Control(NamedTuple):
    """SYNC, POSITION, INFO (no args) or DELETE, GC (``position``)."""

    request_id: int
    op: Op
    position: Position | None = None


class BadRequest(NamedTuple):
    """A request that cannot be served: answer with ``error`` (request_id 0 when unreadable)."""

    request_id: int
    error: WalError


Request = Union[Append, Control, BadRequest]


def _unpack_header(head: BytesLike) -> Any:
    return msgpack.unpackb(head, raw=True, use_list=True, strict_map_key=True)


_ARGS = {Op.APPEND: 1, Op.SYNC: 0, Op.POSITION: 0, Op.DELETE: 2, Op.INFO: 0, Op.GC: 2}


def decode_request(frames: Sequence[BytesLike]) -> Request:
    """Parse a request's frames (identity already removed); never raises.

    Checks the shape only; an APPEND's payload is checked by ``check_payload``.
    """
    if not frames or len(frames) > 2:
        return BadRequest(0, ProtocolError(f"a request has 1 or 2 frames, got {len(frames)}"))
    fast = _plain_append(frames)
    if fast is not None:
        return fast
    header = _header_ints(frames[0])
    if type(header) is BadRequest:
        return header
    assert type(header) is list
    return _request_of(header, frames)


def _plain_append(frames: Sequence[BytesLike]) -> Append | None:
    """The hot path: a well-formed APPEND (one unpack, no enum, no exception); None for anything else."""
    head = frames[0]
    if len(frames) == 1:
        h = compact_append(head)
        return None if h is None else Append(h[0], h[1], memoryview(head)[APPEND_HEADER_SIZE:])
    if len(head) > MAX_HEADER_BYTES:
        return None
    try:
        a = _unpack_header(head)
    except Exception:  # noqa: BLE001  msgpack raises several unrelated types for garbage
        return None
    if (
        type(a) is list
        and len(a) == 4
        and type(a[0]) is int
        and a[0] == VERSION
        and type(a[1]) is int
        and a[1] == 1
        and type(a[2]) is int
        and type(a[3]) is int
        and 0 <= a[2] < 2**64
    ):
        return Append(a[2], a[3], frames[1])
    return None


def _header_ints(head: BytesLike) -> list[int] | BadRequest:
    """The header's integers ``[version, op, request_id, *args]`` with version and op known, or why not."""
    if len(head) > MAX_HEADER_BYTES:
        return BadRequest(0, ProtocolError(f"request header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}"))
    try:
        h = _unpack_header(head)
    except Exception as exc:  # msgpack raises several unrelated types for garbage
        return BadRequest(0, ProtocolError(f"request header is not msgpack: {type(exc).__name__}"))
    if type(h) is not list or len(h) < 3 or not all(type(x) is int for x in h):
        return BadRequest(
            0, ProtocolError("request header must be a msgpack array of integers [version, op, request_id, *args]")
        )
    version, op, rid = h[0], h[1], h[2]
    if not 0 <= rid < 2**64:
        return BadRequest(0, ProtocolError(f"request id {rid} out of range"))
    if version != VERSION:
        return BadRequest(rid, ProtocolError(f"protocol version {version} not supported (the writer speaks {VERSION})"))
    if op not in _ARGS:
        return BadRequest(rid, ProtocolError(f"unknown op {op}"))
    return h


def _request_of(h: list[int], frames: Sequence[BytesLike]) -> Request:
    """The request a valid header (``_header_ints``) and its frames make: its args and frames checked."""
    op, rid, args = Op(h[1]), h[2], h[3:]
    if len(args) != _ARGS[op]:
        return BadRequest(rid, ProtocolError(f"{op.name} takes {_ARGS[op]} argument(s), got {len(args)}"))
    if op is Op.APPEND:
        if len(frames) != 2:
            return BadRequest(rid, ProtocolError("APPEND needs a payload frame"))
        return Append(rid, args[0], frames[1])
    if len(frames) != 1:
        return BadRequest(rid, ProtocolError(f"{op.name} takes no payload frame"))
    if op is Op.DELETE or op is Op.GC:
        if args[0] < 0 or args[1] < 0:
            return BadRequest(rid, ProtocolError(f"{op.name} position must not be negative"))
        return Control(rid, op, Position(args[0], args[1]))
    return Control(rid, op)


def check_payload(payload: BytesLike, record_count: int, max_frame: int) -> WalError | None:
    """None if ``payload`` is whole valid record frames, exactly ``record_count`` of them.

    Otherwise the error to answer with (never raises): ProtocolError for bad
    framing, checksums, flags or counts; RecordTooLargeError for a frame larger
    than a segment holds (``max_frame``) or a payload over MAX_PAYLOAD_BYTES.
    """
    res = validate_payload(payload, record_count, max_frame)
    return None if isinstance(res, int) else res


def validate_payload(
    payload: BytesLike, record_count: int, max_frame: int, keys: list[int | bytes] | None = None
) -> WalError | int:
    """``check_payload``'s error, or, for a valid payload, how many of its frames carry an idempotency key.

    The keys come free with the scan (``scan_frames(..., keys)``: each keyed
    frame's offset and key, added to ``keys``), so the writer needs no hint
    from the producer to find them and never parses a frame twice.
    """
    n = len(payload)
    if n > MAX_PAYLOAD_BYTES:
        return RecordTooLargeError(f"payload of {n} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte message limit")
    if record_count <= 0 or n == 0:
        return ProtocolError(f"APPEND of {record_count} record(s) in {n} bytes: need at least one record")
    if record_count > n // MIN_FRAME_SIZE:
        return ProtocolError(f"APPEND claims {record_count} records but {n} bytes hold at most {n // MIN_FRAME_SIZE}")
    if keys is None:
        keys = []
    res = scan_frames(payload, 0, FORMAT_MAX_FRAME, keys)
    if res.stop is Stop.END and res.valid_end == n:
        if res.records != record_count:
            return ProtocolError(f"APPEND claims {record_count} records but the payload holds {res.records}")
        if res.compressed:  # a CRC is no proof the value decompresses: readers would stop there
            err = _check_compressed_values(payload)
            if err is not None:
                return err
        if n > max_frame:  # only then can a single frame be too large for a segment
            err = _check_frame_sizes(payload, max_frame)
            if err is not None:
                return err
        return res.keyed
    return _scan_error(res, n)


def _scan_error(res: ScanResult, n: int) -> WalError:
    """The error for a payload whose scan stopped before its end (or past a seal)."""
    if res.stop is Stop.SEALED:  # (the scan stops past the seal: name where it starts)
        return ProtocolError(
            f"record {res.records} at payload offset {res.valid_end - SEAL_FRAME_SIZE} is a "
            f"seal frame: seals are writer-internal"
        )
    at = f"record {res.records} at payload offset {res.valid_end}"
    if res.stop is Stop.TORN:
        return ProtocolError(f"{at} is cut off by the end of the payload ({n} bytes)")
    if res.stop is Stop.ZEROED:
        return ProtocolError(f"{at}: zero bytes where a frame should start")
    if res.stop is Stop.CORRUPT:
        return ProtocolError(f"{at} is invalid: {res.reason}")
    return ProtocolError(f"{at}: payload does not end after a whole frame")


def _check_compressed_values(payload: BytesLike) -> WalError | None:
    """ProtocolError for the first compressed value that does not decompress (frames already validated).

    A checksummed frame whose value will not decompress would be written, and every
    reader would raise CorruptionError there for good: one producer could poison the
    log (found by the wire fuzz). Readers decompress within FORMAT_MAX_FRAME; so does this.
    """
    off, n, i = 0, len(payload), 0
    while off < n:
        lay = parse_header(payload, off, n)
        if type(lay) is not tuple:
            return ProtocolError(f"record {i} at payload offset {off} is invalid")
        flags, _ttl, _ks, vs, end = lay
        comp = (flags & COMPRESSION_MASK) >> COMPRESSION_SHIFT
        vs = stored_value_start(payload, flags, vs)  # (a keyed frame's block was checked by the scan)
        if comp and decompress_value(memoryview(payload)[vs:end], comp, FORMAT_MAX_FRAME) is None:
            return ProtocolError(
                f"record {i} at payload offset {off}: its value does not decompress as {Compression(comp).name}"
            )
        off, i = end, i + 1
    return None


def _check_frame_sizes(payload: BytesLike, max_frame: int) -> WalError | None:
    """RecordTooLargeError for the first frame larger than ``max_frame`` (frames already validated)."""
    off, n, i = 0, len(payload), 0
    while off < n:
        lay = parse_header(payload, off, n)
        end = lay[4] if type(lay) is tuple else n
        if end - off > max_frame:
            return RecordTooLargeError(
                f"record {i} at payload offset {off} has a frame of {end - off} bytes; "
                f"a segment holds at most {max_frame}"
            )
        off, i = end, i + 1
    return None


def split_units(payload: BytesLike, record_count: int, max_unit: int) -> list[tuple[int, int, int]]:
    """Cut a validated payload into units of at most ``max_unit`` bytes at frame boundaries.

    Returns ``(start, end, record_count)`` per unit, in order. Every frame must
    fit in ``max_unit`` (``check_payload`` made sure). A payload that fits is
    one unit: this walk only runs for payloads larger than a segment.
    """
    n = len(payload)
    if n <= max_unit:
        return [(0, n, record_count)]
    units: list[tuple[int, int, int]] = []
    start = off = count = 0
    while off < n:
        lay = parse_header(payload, off, n)
        end = lay[4] if type(lay) is tuple else n
        if end - start > max_unit and count:
            units.append((start, off, count))
            start, count = off, 0
        off, count = end, count + 1
    units.append((start, n, count))
    return units


# -- replies --------------------------------------------------------------------------------


def encode_ok(request_id: int, result: Any) -> bytes:
    return _packb([VERSION, request_id, OK, result])


# The reply to a one-unit APPEND in one fixed msgpack shape:
# [VERSION, uint64 request_id, OK, [uint64 segment_id, uint64 offset, uint32 count]].
# Public for a producer's hot path: unpack, then compare (head, mid, tag, tag) with RUN_REPLY_TAGS.
RUN_REPLY = struct.Struct(">3sQ3sQBQBI")
_RUN_HEAD = bytes((0x94, VERSION, 0xCF))  # fixarray(4), version, uint64 tag (the request id follows)
_RUN_MID = bytes((OK, 0x93, 0xCF))  # OK, fixarray(3), uint64 tag (the segment id follows)
RUN_REPLY_TAGS = (_RUN_HEAD, _RUN_MID, 0xCF, 0xCE)
RUN_REPLY_SIZE = RUN_REPLY.size


def encode_run_ok(request_id: int, segment_id: int, offset: int, count: int) -> bytes:
    """``encode_ok(request_id, [segment_id, offset, count])``, built with one struct call (the writer's hot path)."""
    return RUN_REPLY.pack(_RUN_HEAD, request_id, _RUN_MID, segment_id, 0xCF, offset, 0xCE, count)


def run_reply(data: BytesLike) -> tuple[int, int, int, int] | None:
    """(request_id, segment_id, offset, count) of a reply in ``encode_run_ok``'s shape; None for any other.

    The client's per-append fast path; None sends the reply through msgpack (``decode_reply``).
    """
    if len(data) != RUN_REPLY_SIZE:
        return None
    head, rid, mid, seg, t3, off, t4, count = RUN_REPLY.unpack(data)
    return (rid, seg, off, count) if (head, mid, t3, t4) == RUN_REPLY_TAGS else None


def encode_error(request_id: int, exc: BaseException) -> bytes:
    name, message = error_to_wire(exc)
    return _packb([VERSION, request_id, ERR, [name, message]])


class Reply(NamedTuple):
    request_id: int
    ok: bool
    result: Any  # the OK result, or the WalError an ERR reply carries


def decode_reply(data: BytesLike) -> Reply:
    """Parse a reply; raises ProtocolError for anything that is not one.

    The one reply parser of the clients. A reply in ``encode_run_ok``'s fixed
    shape is read with one struct call (the same result msgpack would give).
    """
    run = run_reply(data)
    if run is not None:
        return Reply(run[0], True, [run[1], run[2], run[3]])
    try:
        r = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"reply is not msgpack: {type(exc).__name__}") from None
    if type(r) is not list or len(r) != 4 or type(r[1]) is not int or r[2] not in (OK, ERR):
        raise ProtocolError("reply must be [version, request_id, status, result]")
    if r[0] != VERSION:
        raise ProtocolError(f"reply in protocol version {r[0]}; this client speaks {VERSION}")
    if r[2] == OK:
        return Reply(r[1], True, r[3])
    res = r[3]
    if type(res) is not list or len(res) != 2 or not all(type(x) is str for x in res):
        raise ProtocolError("error reply must carry [error_name, message]")
    return Reply(r[1], False, error_from_wire(res[0], res[1]))


def encode_gc_result(plan: GcPlan) -> dict[str, Any]:
    """A GC reply's result: the plan ``SegmentLog.delete_segments_before`` carried out (docs/PROTOCOL.md)."""
    return {
        "deleted": list(plan.delete),
        "held_back": list(plan.held_back),
        "held_by": [[h.name, h.next.segment_id, h.next.offset] for h in plan.held_by],
        "expired": [[e.name, *e.lost_from, *e.resumes_at] for e in plan.expire],
    }


def decode_gc_result(result: Any) -> GcPlan:
    """The ``GcPlan`` a GC reply carries; ProtocolError for any other shape."""
    try:
        if type(result) is not dict:
            raise TypeError
        ints = [_int_list(result["deleted"]), _int_list(result["held_back"])]
        held_by = [Hold(_name(h[0]), Position(*_int_list(h[1:], 2))) for h in result["held_by"]]
        expired = [
            Expired(_name(e[0]), Position(*_int_list(e[1:3], 2)), Position(*_int_list(e[3:], 2)))
            for e in result["expired"]
        ]
    except (TypeError, KeyError, IndexError, ValueError):
        raise ProtocolError(
            f"GC reply must be a map of deleted, held_back, held_by, expired; got {result!r:.80}"
        ) from None
    return GcPlan(ints[0], ints[1], held_by, expired)


def _int_list(value: Any, length: int | None = None) -> list[int]:
    if type(value) is not list or not all(type(v) is int and v >= 0 for v in value):
        raise TypeError
    if length is not None and len(value) != length:
        raise ValueError
    return value


def _name(value: Any) -> str:
    if type(value) is not str:
        raise TypeError
    return value


def positions_from_runs(runs: Sequence[int], frame_lengths: Sequence[int]) -> list[Position]:
    """Every record's Position from an APPEND reply's flat runs and the frames' lengths.

    Raises ProtocolError when the runs do not cover exactly ``len(frame_lengths)`` records.
    """
    total = len(frame_lengths)
    if len(runs) % 3:
        raise ProtocolError(f"append reply runs must be triples, got {len(runs)} integers")
    if len(runs) == 3 and runs[2] == total > 0:  # the common case: one run covers every record
        return _run_positions(runs[0], runs[1], frame_lengths)
    out: list[Position] = []
    i = 0
    for r in range(0, len(runs), 3):
        seg, off, count = runs[r], runs[r + 1], runs[r + 2]
        if count <= 0 or i + count > total:
            raise ProtocolError(f"append reply covers more than the {total} records sent")
        out += _run_positions(seg, off, frame_lengths[i : i + count])
        i += count
    if i != total:
        raise ProtocolError(f"append reply covers {i} of the {total} records sent")
    return out


def _run_positions(seg: int, off: int, lengths: Sequence[int]) -> list[Position]:
    """Positions of back-to-back frames of these lengths starting at ``seg:off`` (all in C loops)."""
    offsets = accumulate(islice(lengths, len(lengths) - 1), initial=off)
    return list(map(_tuple_new, repeat(Position), zip(repeat(seg), offsets)))


_tuple_new = tuple.__new__  # builds a Position without NamedTuple.__new__'s Python-level call


def position_result(result: Any) -> Position:
    """A SYNC or POSITION result as a Position (ProtocolError if malformed)."""
    if type(result) is not list or len(result) != 2 or not all(type(x) is int for x in result):
        raise ProtocolError(f"expected [segment_id, offset], got {result!r:.80}")
    return Position(result[0], result[1])
