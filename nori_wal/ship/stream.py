"""The JetStream side of shipping: connect, check (or create) the stream, and read where it stands.

Maps nats-py's exceptions to the ship errors once, here: permanent problems
(no such stream, refused credentials, a stream that cannot deduplicate for us)
raise ``ShipError``s; everything else is transient and the shipper retries it.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, NamedTuple, Optional

from ..position import Position
from .errors import ShipAuthorizationError, StreamConfigError, StreamNotFoundError
from .mapping import position_of, subject_matches

log = logging.getLogger("nori_wal.ship")

MIN_DUPLICATE_WINDOW = 2.0  # seconds, floor of the duplicate window the shipper accepts
NO_MESSAGE = 10037  # JetStream: "no message found"
STREAM_NOT_FOUND = 10059
WRONG_LAST_SEQUENCE = 10071


class AckError(Exception):
    """An answer to a publish that is neither an ack nor a JetStream error (transient: the shipper resyncs)."""


_ACK_HEAD = b'{"stream":'


def parse_ack(data: bytes, headers: Optional[Mapping[str, str]] = None) -> bool:
    """Whether JetStream's answer to a publish marks a duplicate; raises what a refusal means.

    The common answer, ``{"stream":"S","seq":N}`` (``,"duplicate":true``
    for a re-send JetStream dropped), is recognised without a JSON parse
    (strings in it are JSON-escaped, so neither marker can hide inside a
    name); anything else is parsed: a JetStream error raises nats-py's
    ``APIError``, "no responders" its ``NoStreamResponseError``.
    """
    if data.startswith(_ACK_HEAD) and b'"error"' not in data:
        return b'"duplicate":true' in data
    return _parse_other(data, headers)


def _parse_other(data: bytes, headers: Optional[Mapping[str, str]]) -> bool:
    import nats.js.errors as jse

    if headers and headers.get("Status") == "503":
        raise jse.NoStreamResponseError()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        raise jse.APIError.from_error(answer["error"])
    if isinstance(answer, dict) and "stream" in answer and "seq" in answer:
        return bool(answer.get("duplicate"))
    raise AckError(f"unexpected answer to a publish: {bytes(data[:200])!r} (headers {dict(headers or {})})")


class StreamState(NamedTuple):
    last_seq: int  # the stream's last sequence number (0 when empty)
    shipped_through: Optional[Position]  # the last position of this log on the subject, if any


def republish_span(ack_timeout: float) -> float:
    """How long after its first send a message may be sent again (docs/SHIPPING.md, "exactly once").

    A send is given up after ``ack_timeout``; the shipper then waits up to
    another ``ack_timeout`` for the sends still in flight before it re-reads
    the stream and re-sends what the stream does not hold.
    """
    return max(MIN_DUPLICATE_WINDOW, 2 * ack_timeout)


def is_auth_error(exc: BaseException) -> bool:
    import nats.errors

    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text or "permissions" in text


def redact(url: str) -> str:
    """``url`` without its password (``nats://user:***@host:4222``), for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


async def connect(servers: list[str], **options: Any) -> Any:
    """One connection attempt round over ``servers`` (nats-py retries each a few times, then gives up)."""
    import nats

    seen: list[Exception] = []

    async def quiet(exc: Exception) -> None:  # nats-py prints tracebacks by default; we keep the reason
        seen.append(exc)
        log.debug("nats: %r", exc)

    try:
        return await nats.connect(
            servers,
            connect_timeout=2,
            max_reconnect_attempts=2,
            reconnect_time_wait=0.5,
            error_cb=quiet,
            **options,
        )
    except Exception as exc:
        refused = next((e for e in [exc, *seen] if is_auth_error(e)), None)
        if refused is not None:
            where = ", ".join(map(redact, servers))
            raise ShipAuthorizationError(f"NATS at {where} refused the credentials: {refused!r}") from exc
        raise


async def check_stream(
    js: Any, stream: str, subject: str, ack_timeout: float, create_replicas: Optional[int] = None
) -> float:
    """Check that ``stream`` exists, takes ``subject`` and deduplicates long enough; returns its duplicate window.

    With ``create_replicas`` a missing stream is created (subject, replicas,
    a duplicate window of at least two minutes).
    """
    import nats.js.errors as jse
    from nats.js.api import StreamConfig

    span = republish_span(ack_timeout)
    try:
        info = await js.stream_info(stream)
    except jse.NotFoundError as exc:
        if create_replicas is None:
            raise StreamNotFoundError(
                f"stream {stream!r} does not exist: create it (nats stream add) or pass --create-stream --replicas N"
            ) from exc
        window = max(120.0, span)
        await js.add_stream(
            StreamConfig(name=stream, subjects=[subject], num_replicas=create_replicas, duplicate_window=window)
        )
        log.info(
            "created stream %s (subject %s, %d replicas, duplicate window %.0f s)",
            stream,
            subject,
            create_replicas,
            window,
        )
        return window
    except jse.APIError as exc:
        if is_auth_error(exc) or exc.code == 403:
            raise ShipAuthorizationError(f"not allowed to read stream {stream!r}: {exc.description}") from exc
        raise
    subjects = info.config.subjects or []
    if not any(subject_matches(p, subject) for p in subjects):
        raise StreamConfigError(
            f"stream {stream!r} does not take subject {subject!r} (its subjects: {', '.join(subjects)})"
        )
    window = float(info.config.duplicate_window or 0.0)
    if window < span:
        raise StreamConfigError(
            f"stream {stream!r} has a duplicate window of {window:g} s, shorter than the shipper's re-publish "
            f"span of {span:g} s (2 x ack timeout): raise it (nats stream edit {stream} --dupe-window 2m) "
            "or lower --ack-timeout"
        )
    return window


async def stream_state(js: Any, stream: str, subject: str, log_id: str) -> StreamState:
    """Where the stream stands: its last sequence, and the last position of this log it holds on ``subject``."""
    import nats.js.errors as jse

    shipped: Optional[Position] = None
    try:
        last = await js.get_last_msg(stream, subject)
        shipped = position_of(last.headers, log_id)
    except jse.NotFoundError as exc:
        if exc.err_code == STREAM_NOT_FOUND:
            raise StreamNotFoundError(f"stream {stream!r} does not exist (deleted while shipping?)") from exc
    info = await js.stream_info(stream)
    return StreamState(int(info.state.last_seq), shipped)
