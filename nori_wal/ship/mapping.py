"""How a log record becomes a NATS message, and back (pure). docs/SHIPPING.md is the prose.

Rules:
1. The payload is the record's value, uncompressed; everything else rides in
   headers (NATS headers are text, so the key is base64).
2. ``Nats-Msg-Id`` is ``<log id>:<segment>:<offset>``: unique per record of one
   log, the same every time the record is published, so JetStream drops a re-send.
   It is also where a reader finds the log and the position: every header
   costs the shipper and each of the stream's servers a parse per message, so
   nothing is said twice.
3. ``from_message(to_message(r, p, id))`` gives back ``r``, ``p`` and ``id``.
4. Messages of the first mapping, which repeated the log id and the position
   in ``Nori-Log`` and ``Nori-Position``, read the same (those headers win).
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Mapping, NamedTuple, Optional

from ..position import Position
from ..record import Compression, Record

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
LOG = "Nori-Log"  # the first mapping only (rule 4)
POSITION = "Nori-Position"  # the first mapping only (rule 4)
KEY = "Nori-Key"
TOMBSTONE = "Nori-Tombstone"
TTL_MS = "Nori-TTL-Ms"
COMPRESSION = "Nori-Compression"
IDEMPOTENCY_KEY = "Nori-Idempotency-Key"

_COMPRESSION_NAMES = {Compression.LZ4: "lz4", Compression.ZSTD: "zstd"}
_COMPRESSION_BY_NAME = {v: k for k, v in _COMPRESSION_NAMES.items()}


class Message(NamedTuple):
    headers: dict[str, str]
    payload: bytes


class BadMessageError(ValueError):
    """A message that does not follow the mapping (names the header at fault)."""


def message_id(log_id: str, position: Position) -> str:
    return f"{log_id}:{position.segment_id}:{position.offset}"


def to_message(record: Record, position: Position, log_id: str) -> Message:
    headers = {
        MSG_ID: message_id(log_id, position),
        KEY: base64.b64encode(record.key).decode("ascii"),
    }
    if record.tombstone:
        headers[TOMBSTONE] = "1"
    if record.ttl is not None:
        headers[TTL_MS] = str(round(record.ttl / timedelta(milliseconds=1)))
    if record.compression != Compression.NONE:
        headers[COMPRESSION] = _COMPRESSION_NAMES[Compression(record.compression)]
    idem = getattr(record, "idempotency_key", None)
    if idem:
        headers[IDEMPOTENCY_KEY] = base64.b64encode(bytes(idem)).decode("ascii")
    return Message(headers, bytes(record.value))


def _b64(headers: Mapping[str, str], name: str) -> bytes:
    try:
        return base64.b64decode(headers.get(name, ""), validate=True)
    except (binascii.Error, ValueError):
        raise BadMessageError(f"header {name}: not base64") from None


def _origin(headers: Mapping[str, str]) -> Optional[tuple[str, str, str]]:
    """(log id, position text, the header it came from) of a shipped message, None when it names no log."""
    if LOG in headers:  # the first mapping
        return headers[LOG], headers.get(POSITION, ""), POSITION
    log_id, sep, position = headers.get(MSG_ID, "").partition(":")
    return (log_id, position, MSG_ID) if sep and log_id else None


def position_of(headers: Optional[Mapping[str, str]], log_id: str) -> Optional[Position]:
    """The log position a message carries, if it was shipped from the log ``log_id`` (else None)."""
    origin = _origin(headers) if headers else None
    if origin is None or origin[0] != log_id:
        return None
    try:
        return Position.parse(origin[1])
    except ValueError as exc:
        raise BadMessageError(f"header {origin[2]}: {exc}") from None


def _record(headers: Mapping[str, str], payload: bytes) -> Record:
    key = _b64(headers, KEY)
    if headers.get(TOMBSTONE) == "1":
        record = Record.delete(key)
    elif TTL_MS in headers:
        try:
            ttl = timedelta(milliseconds=int(headers[TTL_MS]))
        except ValueError:
            raise BadMessageError(f"header {TTL_MS}: not a whole number") from None
        record = Record.put_with_ttl(key, payload, ttl)
    else:
        record = Record.put(key, payload)
    name = headers.get(COMPRESSION)
    if name is not None:
        if name not in _COMPRESSION_BY_NAME:
            raise BadMessageError(f"header {COMPRESSION}: unknown compression {name!r}")
        record = record.with_compression(_COMPRESSION_BY_NAME[name])
    with_key = getattr(record, "with_idempotency_key", None)  # exactly-once appends, where the Record has them
    if IDEMPOTENCY_KEY in headers and with_key is not None:
        record = with_key(_b64(headers, IDEMPOTENCY_KEY))
    return record


def from_message(headers: Mapping[str, str], payload: bytes) -> tuple[Record, Position, str]:
    """The record, position and log id of a shipped message (raises BadMessageError for anything else)."""
    origin = _origin(headers)
    if origin is None or not origin[0]:
        raise BadMessageError(
            f"header {MSG_ID} (<log id>:<segment>:<offset>) or {LOG} missing: not a message shipped by nori-wal"
        )
    log_id = origin[0]
    position = position_of(headers, log_id)
    assert position is not None
    return _record(headers, payload), position, log_id


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` the rest (one or more tokens)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)
