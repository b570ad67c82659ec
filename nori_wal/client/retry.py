"""Transparent retries: resend a request whose outcome is unknown, with the same identity, until a deadline.

Rules:
1. Only ``WriterUnavailableError`` is retried: the connection was lost, the
   writer restarted (or is not running yet), or no reply came within
   ``timeout``. The request may or may not have been written; every other
   error is an answer and is raised at once.
2. A retry carries the same frames: each record's idempotency key is in its
   frame, so the writer answers a record it already holds with the original
   position (``duplicate``) instead of writing it again.
3. Records without a key get an automatic one when the client retries
   (``delivery_timeout`` set): ``AUTO_KEY_PREFIX``, 8 random bytes per
   process (new in a forked child) and a 7-byte sequence, 16 bytes in all. It
   is stored in the frame (a restarted writer rebuilds it from the log) and
   read back as ``record.idempotency_key``. The writer remembers keys of
   that shape for ``WalConfig.auto_key_window``, not the dedupe window
   (``dedupe`` Rule 2).
4. Between attempts the caller backs off (10 ms, doubling, at most 200 ms):
   a writer being restarted is not hammered, and a call fails only once
   ``delivery_timeout`` has passed since it started: WriterUnavailableError
   saying so, chained to the last attempt's error.
5. ``delivery_timeout`` is at most ``MAX_DELIVERY_TIMEOUT`` (120 s, Kafka's
   default delivery timeout): every writer remembers automatic keys longer
   than that (``WalConfig.auto_key_window`` >= 150 s: the longest retry span
   and 30 s for a retry still queued at the writer), so no client can retry
   past what its writer remembers.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
import time
from functools import partial
from typing import Awaitable, Callable, Iterable, TypeVar

from ..codec import encode_record, encode_with_key
from ..dedupe import AUTO_KEY_PREFIX, AUTO_KEY_SIZE, MAX_DELIVERY_TIMEOUT
from ..errors import WriterUnavailableError
from ..record import Record

T = TypeVar("T")

BACKOFF_FIRST_S = 0.010
BACKOFF_MAX_S = 0.200


def check_delivery_timeout(value: float | None) -> float | None:
    """``value`` as seconds (None: no retries), or ValueError (Rule 5)."""
    if value is None:
        return None
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"delivery_timeout must be None or a finite number of seconds > 0, got {value!r}")
    if value > MAX_DELIVERY_TIMEOUT:
        raise ValueError(
            f"delivery_timeout must be at most {MAX_DELIVERY_TIMEOUT:g} s, got {value!r}: a writer remembers a "
            f"retrying client's automatic keys for WalConfig.auto_key_window (at least 150 s), and a retry "
            f"after it could append a record twice"
        )
    return float(value)


class _AutoKeys:
    """This process's producer id and sequence (Rule 3); renewed in a forked child.

    A key is one struct call: the prefix and the first 7 bytes of the producer
    id as one u64, its last byte and the 7-byte sequence as another.
    """

    def __init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        producer = int.from_bytes(os.urandom(8), "big")
        self.key: Callable[[], bytes] = map(
            partial(_pack_key, producer >> 8), itertools.count(((producer & 0xFF) << 56) + 1)
        ).__next__


_pack_key = struct.Struct(">QQ").pack  # (AUTO_KEY_PREFIX is the first byte: producer >> 8 is below 2**56)
_AUTO = _AutoKeys()
os.register_at_fork(after_in_child=_AUTO.renew)
_tuple_new = tuple.__new__


def auto_key() -> bytes:
    """A new automatic key of this process (Rule 3)."""
    return _AUTO.key()


def with_identity(record: Record) -> Record:
    """``record`` with an automatic idempotency key unless it has one (Rule 3)."""
    if record[5] is not None:  # (idempotency_key)
        return record
    return _tuple_new(Record, record[:5] + (_AUTO.key(),))  # (a Record without NamedTuple's slow _replace)


def identity_frames(records: Iterable[Record]) -> list[bytes]:
    """The frames of ``records``, each keyed: ``encode_record(with_identity(r))``, without the keyed Records."""
    key = _AUTO.key
    return [encode_with_key(r, key()) if r[5] is None else encode_record(r) for r in records]


def backoff_delays() -> itertools.chain[float]:
    """10 ms, 20, 40, ... at most 200 ms (Rule 4)."""
    first = [BACKOFF_FIRST_S * 2**i for i in range(5) if BACKOFF_FIRST_S * 2**i < BACKOFF_MAX_S]
    return itertools.chain(first, itertools.repeat(BACKOFF_MAX_S))


def deadline_error(delivery_timeout: float, last: BaseException) -> WriterUnavailableError:
    err = WriterUnavailableError(
        f"not delivered within delivery_timeout={delivery_timeout:g} s (retried with the same idempotency "
        f"key; the outcome of the last attempt is unknown): {last}"
    )
    err.__cause__ = last
    return err


def deliver(attempt: Callable[[], T], delivery_timeout: float, started: float | None = None) -> T:
    """Call ``attempt`` until it answers; retry WriterUnavailableError until ``delivery_timeout`` (Rules 1, 4)."""
    deadline = (time.monotonic() if started is None else started) + delivery_timeout
    delays = backoff_delays()
    while True:
        try:
            return attempt()
        except WriterUnavailableError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise deadline_error(delivery_timeout, exc) from exc
            time.sleep(min(next(delays), left))


def redeliver(error: WriterUnavailableError, again: Callable[[], T], delivery_timeout: float, started: float) -> T:
    """After a first attempt (started at ``started``) failed with ``error``: ``deliver(again)`` until the
    deadline, or at once the deadline's error if it has passed."""
    if time.monotonic() - started >= delivery_timeout:
        raise deadline_error(delivery_timeout, error) from error
    return deliver(again, delivery_timeout, started)


async def deliver_async(attempt: Callable[[], Awaitable[T]], delivery_timeout: float) -> T:
    """``deliver`` for the asyncio client: ``attempt()`` returns an awaitable."""
    import asyncio

    deadline = time.monotonic() + delivery_timeout
    delays = backoff_delays()
    while True:
        try:
            return await attempt()
        except WriterUnavailableError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise deadline_error(delivery_timeout, exc) from exc
            await asyncio.sleep(min(next(delays), left))


__all__ = [
    "AUTO_KEY_PREFIX",
    "AUTO_KEY_SIZE",
    "auto_key",
    "check_delivery_timeout",
    "deliver",
    "deliver_async",
    "identity_frames",
    "redeliver",
    "with_identity",
]
