"""One pass of the writer loop as values: requests in, one write and its replies out (pure).

No sockets, no files, no clocks: the loop (``loop.WriterServer``) receives the
messages, hands each to a ``GroupBuilder`` and acts on what it says; after the
group's one write it asks ``group_acks`` for the replies that write earned.

Rules:
1. Requests are taken in the order received. A control request (SYNC,
   POSITION, DELETE, INFO) ends the group before it: the loop writes the
   appends received before it first, so each producer's order holds.
2. A bad request (its frames, its header, its payload) is answered with an
   error reply at once and adds nothing to the group: one producer's bad
   input never changes another's state.
3. A valid APPEND is one unit of the group's write, except a payload larger
   than a segment holds, which is cut at frame boundaries into several
   (``protocol.split_units``); its reply then carries one run per unit.
4. A one-record append in our clients' encoding is validated in a few steps
   (``scan.one_plain_frame``, or ``scan.one_keyed_frame`` for a keyed one, as
   a retrying client sends); anything else with one ``validate_payload`` call.
5. A payload that holds keyed frames (the scan finds them) goes through the
   group's ``GroupKeys`` (``dedupe_stage``): duplicates are not written. Only
   then is the group's ``keys`` set, and the loop writes it keyed.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

from .. import protocol as P
from ..errors import ProtocolError
from ..position import Position
from ..record import BytesLike
from ..scan import one_keyed_frame, one_plain_frame
from .dedupe_stage import GroupKeys, WriterKeys

_HEADER_SIZE = P.APPEND_HEADER_SIZE
# NamedTuples built per request without NamedTuple.__new__'s Python-level call (the writer's hot path).
_tuple_new = tuple.__new__


class Pending(NamedTuple):
    """An APPEND validated and waiting to be written."""

    ident: bytes  # the producer's routing id
    request_id: int
    records: int
    size: int  # payload bytes
    units: int  # units it became (1, or more for a payload larger than a segment: Rule 3)


class Ticket(NamedTuple):
    """A request waiting for its acknowledgement (what ``commit.GroupCommit`` holds)."""

    ident: bytes
    request_id: int
    reply: bytes | None  # None for a SYNC: built at ack time, when the durable position is known
    received: float  # perf_counter when its group was received (for the ack latency histogram)


# What ``GroupBuilder.add`` says about a request: None (it joined the group), an error reply to send
# now, or a control request that ends the group.
Step = Optional[Union[bytes, P.Control]]


class GroupBuilder:
    """The appends of one group so far: the units to write with one call and the requests they came from.

    One per group: the loop writes it (``units``, ``counts``; ``records`` and
    ``nbytes`` in all) and starts a new one.
    """

    __slots__ = ("counts", "dedupe", "keys", "max_frame", "nbytes", "pending", "records", "units")

    def __init__(self, max_frame: int, dedupe: WriterKeys | None = None):
        self.max_frame = max_frame  # the largest frame a segment holds
        self.dedupe = dedupe  # None: keyed frames are written like any other
        self.keys: GroupKeys | None = None  # set by the group's first keyed request (Rule 5)
        self.units: list[BytesLike] = []
        self.counts: list[int] = []  # records per unit
        self.pending: list[Pending] = []
        self.records = 0
        self.nbytes = 0

    def add(
        self, ident: bytes, head: BytesLike, payload: BytesLike | None, nframes: int = 0
    ) -> bytes | P.Control | None:
        """Take one request: None when it joined the group; an error reply to send now (Rule 2);
        or a control request, which ends the group (Rule 1).

        ``head``: its first frame; ``payload``: its second, None for a one-frame
        request (a compact APPEND or a control). ``nframes``: its frame count
        when more than two (garbage: those frames are not kept).
        """
        if nframes > 2:
            return P.encode_error(0, ProtocolError(f"a request has 1 or 2 frames, got {nframes}"))
        if payload is None:  # one frame: a compact APPEND (our clients'), or a control
            h = P.compact_append(head)
            if h is not None:
                payload = memoryview(head)[_HEADER_SIZE:]
        else:
            h = P.append_header(head)
        if h is not None:  # the hot path: an APPEND in our clients' encoding
            rid, count = h
        else:
            req = P.decode_request((head,) if payload is None else (head, payload))
            if type(req) is P.Control:
                return req
            if type(req) is P.BadRequest:
                return P.encode_error(req.request_id, req.error)
            assert type(req) is P.Append
            rid, count, payload = req
        assert payload is not None
        return self._add_append(ident, rid, count, payload)

    def _add_append(self, ident: bytes, rid: int, count: int, payload: BytesLike) -> bytes | None:
        """Validate an APPEND's payload (Rule 4) and add it as one unit or several (Rule 3)."""
        max_frame = self.max_frame
        size = len(payload)
        nunits = 1
        if count != 1 or not one_plain_frame(payload, max_frame):  # else: valid, checked in a few steps
            if count == 1 and self.dedupe is not None and (key := one_keyed_frame(payload, max_frame)) is not None:
                return self._add_keyed(ident, rid, payload, 1, [0, key])  # a retrying producer's one record
            found: list[int | bytes] = []  # keyed frames' offsets and keys (Rule 5)
            keyed = P.validate_payload(payload, count, max_frame, found)
            if not isinstance(keyed, int):
                return P.encode_error(rid, keyed)
            if keyed and self.dedupe is not None:
                return self._add_keyed(ident, rid, payload, count, found)
            if size > max_frame:  # a batch larger than a segment holds: split at frames
                mv = memoryview(payload)
                parts = P.split_units(payload, count, max_frame)
                self.units += [mv[s:e] for s, e, _c in parts]
                self.counts += [c for _s, _e, c in parts]
                nunits = len(parts)
        if nunits == 1:
            self.units.append(payload)
            self.counts.append(count)
        self.pending.append(_tuple_new(Pending, (ident, rid, count, size, nunits)))
        self.records += count
        self.nbytes += size
        return None

    def _add_keyed(
        self, ident: bytes, rid: int, payload: BytesLike, count: int, found: list[int | bytes]
    ) -> bytes | None:
        """A valid payload with keyed frames: only its frames not already in the log join the group (Rule 5)."""
        keys = self.keys
        if keys is None:
            assert self.dedupe is not None
            keys = self.keys = self.dedupe.begin_group()
        plan = keys.add(payload, count, found, self.max_frame, len(self.units))
        if not isinstance(plan, tuple):
            return P.encode_error(rid, plan)
        if plan.dups:
            keys.dups[len(self.pending)] = plan.dups
        size = sum(map(len, plan.units))
        records = sum(plan.counts)
        self.units += plan.units
        self.counts += plan.counts
        self.pending.append(_tuple_new(Pending, (ident, rid, records, size, len(plan.units))))
        self.records += records
        self.nbytes += size
        return None


def acks_in_place(
    pending: Sequence[Pending], segment_id: int, start: int, received: float
) -> tuple[list[Ticket], Position]:
    """The tickets of a group written with one write at ``segment_id:start``, and where it ends.

    Each request is one run, right after the one before it.
    """
    run_ok = P.encode_run_ok
    tickets: list[Ticket] = []
    off = start
    for ident, rid, count, size, _n in pending:
        tickets.append(_tuple_new(Ticket, (ident, rid, run_ok(rid, segment_id, off, count), received)))
        off += size
    return tickets, Position(segment_id, off)


def acks_across_roll(
    group: GroupBuilder, firsts: Sequence[tuple[int, int]], received: float
) -> tuple[list[Ticket], Position]:
    """The tickets of a group written across a roll (``firsts``: each unit's first position), and its end.

    A request's units may then sit in two segments: its reply has a run per unit.
    """
    counts = group.counts
    tickets: list[Ticket] = []
    i = 0
    for ident, rid, count, _size, nunits in group.pending:
        if nunits == 1:
            seg, off = firsts[i]
            reply = P.encode_run_ok(rid, seg, off, count)
        else:
            runs: list[int] = []
            for j in range(i, i + nunits):
                runs += (firsts[j][0], firsts[j][1], counts[j])
            reply = P.encode_ok(rid, runs)
        i += nunits
        tickets.append(Ticket(ident, rid, reply, received))
    last_seg, last_off = firsts[-1]
    return tickets, Position(last_seg, last_off + len(group.units[-1]))


def acks_keyed(group: GroupBuilder, firsts: Sequence[Position], received: float) -> list[Ticket]:
    """The tickets of a group holding keyed requests, written with ``dedupe_stage.write_keyed_group``.

    Every request's runs come from its units' first positions (``firsts``; a
    request may have no unit left: all duplicates); one with duplicates says so (Rule 5).
    """
    keys = group.keys
    assert keys is not None
    counts = group.counts
    tickets: list[Ticket] = []
    u = 0
    for pi, (ident, rid, _count, _size, nunits) in enumerate(group.pending):
        runs: list[int] = []
        for j in range(u, u + nunits):
            runs += (firsts[j][0], firsts[j][1], counts[j])
        u += nunits
        reply = keys.reply(rid, pi, runs, firsts) if keys.dups else None
        if reply is None:
            reply = P.encode_run_ok(rid, *runs) if nunits == 1 else P.encode_ok(rid, runs)
        tickets.append(_tuple_new(Ticket, (ident, rid, reply, received)))
    return tickets


__all__ = ["GroupBuilder", "Pending", "Step", "Ticket", "acks_across_roll", "acks_in_place", "acks_keyed"]
