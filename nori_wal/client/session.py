"""A producer connection's request bookkeeping (pure: no sockets, no clocks it reads itself).

The sync and asyncio clients are thin shells over a Session: they hand it
appends and control calls, send what ``take`` gives them, feed it every reply,
and resolve the waiters it returns. Waiters are opaque (a future, a slot).

Rules:
1. At most ``max_in_flight`` requests are outstanding; more appends wait in
   a queue (protocol-level flow control: a ZeroMQ high-water mark would drop
   or block silently, DESIGN rule 9).
2. Appends that wait behind one another are coalesced into one APPEND
   request, up to ``coalesce_bytes``, in the order they were queued (Kafka's
   producer batches the same way). That is how many appends in flight per
   producer get past the messages-per-second ceiling of one record per message.
3. A request is all or nothing at the writer, and resending part of a
   rejected one would put it behind requests sent after it (reordering the
   producer's records). So a coalesced request never carries a frame the
   writer might refuse: only frames no larger than the largest this
   connection's writer has accepted (at first, what the smallest segment
   holds, which every writer accepts). A larger frame goes alone, so its
   rejection answers that append only; once acknowledged, it raises the bar.
   A coalesced request rejected anyway fails each of its appends.
4. A reply whose request id is not in flight is stale (from before a reset)
   and ignored.
5. Positions are computed here from the reply's runs and our frame lengths.
   A reply for keyed records some of which were duplicates (``{"runs",
   "dups"}``, docs/PROTOCOL.md) gives ``KeyedPositions``: the positions, and
   which of them were already in the log.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterable, NamedTuple, Sequence, TypeVar

from .. import protocol as P
from ..dedupe import AppendResult
from ..errors import ProtocolError, RecordTooLargeError, WalError
from ..position import Position, make_position
from ..segment import MIN_SEGMENT_SIZE, max_frame_size

W = TypeVar("W")

MAX_IN_FLIGHT = 8  # requests outstanding per connection
COALESCE_BYTES = 1024 * 1024  # appends merged into one request up to this many bytes
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # an append_batch larger than this is sent as several requests
SAFE_FRAME_BYTES = max_frame_size(MIN_SEGMENT_SIZE)  # a frame every writer accepts (Rule 3)


class _Entry(Generic[W]):
    """One caller's append (one record or a chunk of a batch) waiting to be sent or answered."""

    __slots__ = ("frames", "size", "solo", "waiter")

    def __init__(self, frames: Sequence[bytes], size: int, waiter: W, solo: bool):
        self.frames, self.size, self.waiter, self.solo = frames, size, waiter, solo


class _InFlight(Generic[W]):
    __slots__ = ("entries", "op", "sent_at", "waiter")

    def __init__(self, op: P.Op, entries: list[_Entry[W]] | None, waiter: W | None, sent_at: float):
        self.op, self.entries, self.waiter, self.sent_at = op, entries, waiter, sent_at


class Completion(Generic[W]):
    """What a waiter gets: a value (positions, a Position, a count, a dict) or an error."""

    __slots__ = ("error", "value", "waiter")

    def __init__(self, waiter: W, value: Any = None, error: WalError | None = None):
        self.waiter, self.value, self.error = waiter, value, error


OutFrames = tuple[bytes, ...]


class Session(Generic[W]):
    """Request ids, the in-flight table and the coalescing queue of one connection."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, coalesce_bytes: int = COALESCE_BYTES):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.coalesce_bytes = coalesce_bytes
        # Request ids 1, 2, 3, ...: a C-level counter (no wrap: 2**63 requests would take millennia).
        self.new_id: Callable[[], int] = itertools.count(1).__next__
        self._in_flight: dict[int, _InFlight[W]] = {}
        self._queue: list[_Entry[W]] = []
        self._qhead = 0
        self.queued_bytes = 0  # frame bytes queued, not yet taken
        self.merge_limit = SAFE_FRAME_BYTES  # larger appends are sent alone (Rule 3)

    # -- state ----------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def queued(self) -> int:
        return len(self._queue) - self._qhead

    @property
    def idle(self) -> bool:
        return not self._in_flight and self._qhead == len(self._queue)

    def oldest_sent_at(self) -> float | None:
        """When the oldest outstanding request was sent (for the shell's timeout)."""
        if not self._in_flight:
            return None
        return min(f.sent_at for f in self._in_flight.values())

    # -- appends ----------------------------------------------------------------------------

    def queue_append(self, frames: Sequence[bytes], waiter: W, *, solo: bool = False, size: int | None = None) -> None:
        """Queue frames (one record, or a chunk of a batch) whose positions ``waiter`` will get.

        ``size``: the frames' total length when the caller knows it already.
        Raises RecordTooLargeError at once for a frame no request can carry.
        """
        if size is None:
            size = sum(map(len, frames))
        if size > P.MAX_PAYLOAD_BYTES:
            raise RecordTooLargeError(
                f"{len(frames)} record frame(s) of {size} bytes exceed the "
                f"{P.MAX_PAYLOAD_BYTES}-byte request limit of the writer protocol"
            )
        self._queue.append(_Entry(frames, size, waiter, solo or size >= self.coalesce_bytes))
        self.queued_bytes += size

    def take(self, now: float) -> OutFrames | None:
        """The next request to send (its frames), or None: nothing queued or the in-flight limit reached.

        Coalesces queued appends in order into one request (Rule 2).
        """
        q, i = self._queue, self._qhead
        if i == len(q) or len(self._in_flight) >= self.max_in_flight:
            return None
        first = q[i]
        i += 1
        entries = [first]
        total = first.size
        merge_limit = self.merge_limit
        if not first.solo and total <= merge_limit:
            limit = self.coalesce_bytes
            while i < len(q):
                e = q[i]
                if e.solo or e.size > merge_limit or total + e.size > limit:
                    break
                entries.append(e)
                total += e.size
                i += 1
        self.queued_bytes -= total
        if i == len(q):
            q.clear()
            self._qhead = 0
        else:
            self._qhead = i
            if i > 1024:
                del q[:i]
                self._qhead = 0
        if len(entries) == 1:
            frames = first.frames
            count = len(frames)
            payload = frames[0] if count == 1 else b"".join(frames)
        else:
            all_frames = [f for e in entries for f in e.frames]
            count = len(all_frames)
            payload = b"".join(all_frames)
        rid = self.new_id()
        self._in_flight[rid] = _InFlight(P.Op.APPEND, entries, None, now)
        return (P.encode_append(rid, count), payload)

    # -- control requests -------------------------------------------------------------------

    def control(self, op: P.Op, waiter: W, now: float, *args: int) -> OutFrames:
        """A SYNC / POSITION / DELETE / INFO request to send now (not subject to the in-flight limit)."""
        rid = self.new_id()
        self._in_flight[rid] = _InFlight(op, None, waiter, now)
        return (P.encode_request(op, rid, *args),)

    # -- replies ----------------------------------------------------------------------------

    def complete(self, data: bytes) -> list[Completion[W]]:
        """Match a reply to its request and say which waiters are done with what.

        Raises ProtocolError only for a reply that cannot be parsed at all.
        """
        return self._complete(P.decode_reply(data))

    def direct_reply(self, request_id: int, data: bytes) -> P.Reply | None:
        """The reply ``data`` if it answers ``request_id``, a request sent outside the queue.

        For the sync client's direct path, taken only while this session is
        idle: any other reply is stale (Rule 4) and gives None. Raises
        ProtocolError for a reply that cannot be parsed at all.
        """
        reply = P.decode_reply(data)
        if reply.request_id == request_id:
            return reply
        self._complete(reply)  # (idle: nothing in flight to match, so nothing completes)
        return None

    def _complete(self, reply: P.Reply) -> list[Completion[W]]:
        req = self._in_flight.pop(reply.request_id, None)
        if req is None:
            return []  # Rule 4: stale
        if not reply.ok:
            err: WalError = reply.result
            if req.entries is not None:
                return [Completion(e.waiter, None, err) for e in req.entries]
            assert req.waiter is not None
            return [Completion(req.waiter, None, err)]
        if req.entries is not None:
            first = req.entries[0]
            if first.size > self.merge_limit and len(first.frames) == 1:  # Rule 3: the writer took this size
                self.merge_limit = first.size
            return _append_completions(req.entries, reply.result)
        assert req.waiter is not None
        try:
            value = _control_value(req.op, reply.result)
        except ProtocolError as exc:
            return [Completion(req.waiter, None, exc)]
        return [Completion(req.waiter, value)]

    def fail_all(self, error: WalError) -> list[Completion[W]]:
        """Every waiter, in flight or queued, with ``error`` (the connection is being reset)."""
        out: list[Completion[W]] = []
        for req in self._in_flight.values():
            if req.entries is not None:
                out += [Completion(e.waiter, None, error) for e in req.entries]
            elif req.waiter is not None:
                out.append(Completion(req.waiter, None, error))
        for e in self._queue[self._qhead :]:
            out.append(Completion(e.waiter, None, error))
        self._in_flight.clear()
        self._queue.clear()
        self._qhead = 0
        self.queued_bytes = 0
        return out

    def queue_batch(self, frames: Sequence[bytes], new_waiter: Callable[[], W]) -> Batch[W]:
        """Queue an append_batch's frames: one request when they fit in ``MAX_REQUEST_BYTES``, else one
        per chunk (``chunk_frames``), each with a new waiter; ``batch_positions`` reads the outcome.

        All of it or, when a chunk is too large for any request, none of it
        (RecordTooLargeError before anything is queued).
        """
        size = sum(map(len, frames))
        if size <= MAX_REQUEST_BYTES:  # the common case: one request
            w = new_waiter()
            self.queue_append(frames, w, solo=True, size=size)
            return Batch([w], [len(frames)])
        chunks = chunk_frames(frames)
        return Batch(self.queue_chunks(chunks, new_waiter), [len(c) for c in chunks])

    def queue_chunks(self, chunks: Sequence[Sequence[bytes]], new_waiter: Callable[[], W]) -> list[W]:
        """Queue a split batch, one request (and one new waiter) per chunk: all of it or, when a chunk
        is too large for any request, none of it (``check_chunks`` first)."""
        check_chunks(chunks)
        waiters = []
        for chunk in chunks:
            w = new_waiter()
            self.queue_append(chunk, w, solo=True)
            waiters.append(w)
        return waiters

    def waiters(self) -> list[W]:
        """The waiters of every append outstanding, in flight or queued (what a SYNC must wait for)."""
        out = [e.waiter for req in self._in_flight.values() if req.entries is not None for e in req.entries]
        out += [e.waiter for e in self._queue[self._qhead :]]
        return out

    def forget(self, waiters: set[W]) -> None:
        """Drop queued (not yet sent) appends of these waiters (their caller gave up)."""
        self._queue[self._qhead :] = [e for e in self._queue[self._qhead :] if e.waiter not in waiters]
        self.queued_bytes = sum(e.size for e in self._queue[self._qhead :])


@dataclass(frozen=True)
class Batch(Generic[W]):
    """An append_batch as queued: a waiter per request and the records each carries."""

    waiters: list[W]
    counts: list[int]


class Outcome(NamedTuple):
    """What one request's waiter got: a value, or an error."""

    value: Any
    error: WalError | None


def batch_positions(counts: Sequence[int], outcomes: Sequence[Outcome]) -> list[Position]:
    """The Positions of an append_batch queued as requests of ``counts`` records, from each one's outcome.

    Raises the one request's error, or ``split_batch_error`` when one of
    several failed.
    """
    if len(outcomes) == 1:
        if outcomes[0].error is not None:
            raise outcomes[0].error
        positions: list[Position] = outcomes[0].value
        return positions
    errors = [o.error for o in outcomes]
    if any(e is not None for e in errors):
        raise split_batch_error(counts, errors)
    out: list[Position] = []
    for o in outcomes:
        out += o.value
    return out


class KeyedPositions(list[Position]):
    """The positions of an append some of whose records were duplicates: their indexes are in ``dups``."""

    __slots__ = ("dups",)

    def __init__(self, positions: Iterable[Position], dups: frozenset[int]):
        super().__init__(positions)
        self.dups = dups


def append_results(positions: Sequence[Position]) -> list[AppendResult]:
    """``AppendResult`` per record of an append's positions (``KeyedPositions`` say which were duplicates)."""
    dups: frozenset[int] = getattr(positions, "dups", frozenset())
    return [AppendResult(p, i in dups) for i, p in enumerate(positions)]


def batch_results(counts: Sequence[int], outcomes: Sequence[Outcome]) -> list[AppendResult]:
    """``batch_positions``, as an ``AppendResult`` per record (raising the same errors)."""
    return append_results(batch_keyed_positions(counts, outcomes))


def batch_keyed_positions(counts: Sequence[int], outcomes: Sequence[Outcome]) -> list[Position]:
    """``batch_positions``, as ``KeyedPositions`` when some records were duplicates (raising the same errors)."""
    positions = batch_positions(counts, outcomes)
    if len(outcomes) == 1:
        return positions
    dups: set[int] = set()
    start = 0
    for n, o in zip(counts, outcomes):
        dups.update(start + i for i in getattr(o.value, "dups", ()))
        start += n
    return KeyedPositions(positions, frozenset(dups)) if dups else positions


def _keyed_positions(result: dict[Any, Any], lengths: Sequence[int]) -> KeyedPositions:
    """The positions of a reply with duplicates: runs over the frames written, ``dups`` for the others."""
    runs, flat = result.get("runs"), result.get("dups")
    if type(flat) is not list or len(flat) % 3 or not all(type(x) is int for x in flat):
        raise ProtocolError(f"append reply dups must be flat [index, segment_id, offset, ...], got {flat!r:.80}")
    dup_at = {flat[i]: make_position((flat[i + 1], flat[i + 2])) for i in range(0, len(flat), 3)}
    if not all(0 <= i < len(lengths) for i in dup_at):
        raise ProtocolError(f"append reply names duplicates outside the {len(lengths)} records sent")
    kept = [n for i, n in enumerate(lengths) if i not in dup_at]
    written = iter(positions_of(runs, kept) if kept else _no_runs(runs))
    return KeyedPositions((dup_at[i] if i in dup_at else next(written) for i in range(len(lengths))), frozenset(dup_at))


def _no_runs(runs: Any) -> list[Position]:
    if runs != []:
        raise ProtocolError(f"append reply has runs for no written record: {runs!r:.80}")
    return []


def one_position(runs: Any) -> Position:
    """The Position in the runs of a one-record append (its frame's length does not matter)."""
    return positions_of(runs, (0,))[0]


def positions_of(runs: Any, lengths: Sequence[int]) -> list[Position]:
    """Every record's Position from an APPEND reply's runs (unchecked, as decoded) and the frames' lengths.

    Raises ProtocolError for runs that are not a flat list of integers covering
    exactly ``len(lengths)`` records.
    """
    if type(runs) is dict:
        return _keyed_positions(runs, lengths)
    if type(runs) is not list or not all(type(x) is int for x in runs):
        raise ProtocolError(f"append reply must be a flat list of integers, got {runs!r:.80}")
    if len(lengths) == 1 and len(runs) == 3 and runs[2] == 1:
        return [make_position((runs[0], runs[1]))]  # the common case: one record
    return P.positions_from_runs(runs, lengths)


def _append_completions(entries: list[_Entry[W]], runs: Any) -> list[Completion[W]]:
    if len(entries) == 1:
        lengths = list(map(len, entries[0].frames))
    else:
        lengths = [len(f) for e in entries for f in e.frames]
    try:
        positions = positions_of(runs, lengths)
    except ProtocolError as exc:
        return [Completion(e.waiter, None, exc) for e in entries]
    if len(entries) == 1:
        return [Completion(entries[0].waiter, positions)]
    dups: frozenset[int] = getattr(positions, "dups", frozenset())
    out: list[Completion[W]] = []
    i = 0
    for e in entries:
        n = len(e.frames)
        part = positions[i : i + n]
        if dups:
            part = KeyedPositions(part, frozenset(d - i for d in dups if i <= d < i + n))
        out.append(Completion(e.waiter, part))
        i += n
    return out


def _control_value(op: P.Op, result: Any) -> Any:
    if op in (P.Op.SYNC, P.Op.POSITION):
        return P.position_result(result)
    if op is P.Op.GC:
        return P.decode_gc_result(result)
    if op is P.Op.DELETE:
        if type(result) is not int:
            raise ProtocolError(f"DELETE reply must be a count, got {result!r:.80}")
        return result
    if type(result) is not dict:
        raise ProtocolError(f"INFO reply must be a map, got {result!r:.80}")
    return result


def check_chunks(chunks: Sequence[Sequence[bytes]]) -> None:
    """RecordTooLargeError if any chunk of a batch exceeds the request limit: checked before any is
    queued, so a refused batch leaves nothing behind to be sent by a later call."""
    for chunk in chunks:
        size = sum(map(len, chunk))
        if size > P.MAX_PAYLOAD_BYTES:
            raise RecordTooLargeError(
                f"{len(chunk)} record frame(s) of {size} bytes exceed the "
                f"{P.MAX_PAYLOAD_BYTES}-byte request limit of the writer protocol; "
                f"nothing of the batch was sent"
            )


def split_batch_error(counts: Sequence[int], errors: Sequence[WalError | None]) -> WalError:
    """The error of an append_batch sent as several requests (``counts`` records each) of which one failed.

    The requests are not one unit: those before the first failing one were
    acknowledged (their records are in the log), so the error says how many
    records that is. Same class as the first request's error, which is chained.
    """
    i = next(j for j, e in enumerate(errors) if e is not None)
    err = errors[i]
    assert err is not None
    done = sum(counts[:i])
    later = sum(n for n, e in zip(counts[i + 1 :], errors[i + 1 :]) if e is None)
    msg = (
        f"append_batch of {sum(counts)} records was split into {len(counts)} requests (one per 16 MiB), "
        f"which are not one unit: the first {done} record(s) "
    )
    msg += f"(requests 1-{i}) were acknowledged and are in the log" if i else "were acknowledged (none)"
    msg += f"; request {i + 1} ({counts[i]} records) failed: {err}"
    if later:
        msg += f"; {later} record(s) of later requests were acknowledged too"
    try:
        out = type(err)(msg)
    except TypeError:
        out = WalError(msg)
    out.__cause__ = err
    return out


def chunk_frames(frames: Sequence[bytes], max_bytes: int = MAX_REQUEST_BYTES) -> list[Sequence[bytes]]:
    """Split a batch's frames into runs of at most ``max_bytes`` (a frame larger than that alone)."""
    chunks: list[Sequence[bytes]] = []
    start, size = 0, 0
    for i, f in enumerate(frames):
        if size and size + len(f) > max_bytes:
            chunks.append(frames[start:i])
            start, size = i, 0
        size += len(f)
    if start < len(frames):
        chunks.append(frames[start:])
    return chunks
