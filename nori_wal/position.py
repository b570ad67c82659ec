"""Position: where a record lives, (segment_id, byte offset in that segment) (pure).

Rules:
1. ``Position(seg, off)`` (what users call) checks its fields: ints, not negative,
   below 2**64 (what the wire and the on-disk marks carry); TypeError/ValueError
   name the field.
2. Positions the log itself makes (reader yields, replies, segment offsets) are
   built by ``make_position`` without the checks: they are on the hot path and
   already right.
3. ``str(pos)`` is ``SEG:OFF`` and ``Position.parse`` reads it back; ``Position.coerce``
   also takes the ``[seg, off]`` list a Position becomes in JSON or a Celery result.
"""

from __future__ import annotations

import operator
from functools import partial
from typing import Any, Callable, NamedTuple

POSITION_LIMIT = 2**64  # fields are below this: positions travel as u64 (wire, durable mark)


class Position(NamedTuple):
    """A record's address: segment number (the NNNNNN in NNNNNN.wal) and byte offset.

    Frozen, hashable and totally ordered (tuple order: segment, then offset).
    ``str(pos)`` gives ``"3:32"``; ``Position.parse("3:32")`` reads it back. A
    Position is a tuple, so JSON (and a Celery task's result) turns it into a list
    ``[3, 32]``: ``Position(*lst)`` or ``Position.coerce(lst)`` rebuilds it.
    """

    segment_id: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "Position":
        """Parse ``SEG:OFF`` (as ``str(pos)`` and the command line tools print it)."""
        if not isinstance(text, str):
            raise TypeError(f"Position.parse takes a 'SEG:OFF' string, got {type(text).__name__}")
        seg, sep, off = text.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            segment_id, offset = int(seg), int(off)
        except ValueError:
            raise ValueError(f"bad position {text!r}: expected SEG:OFF, e.g. 3:32") from None
        if segment_id < 0 or offset < 0:
            raise ValueError(f"bad position {text!r}: numbers must not be negative")
        return cls(segment_id, offset)

    @classmethod
    def coerce(cls, value: "Position | str | tuple[int, int] | list[int]") -> "Position":
        """A Position from a Position, a ``SEG:OFF`` string or a ``[seg, off]`` pair (JSON, Celery).

        Anything else is a TypeError that says what is accepted.
        """
        if type(value) is cls:
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(value[0], value[1])
        raise TypeError(
            f"a position must be a Position, a 'SEG:OFF' string or a [segment_id, offset] pair, "
            f"got {type(value).__name__} {value!r:.60}"
        )


_tuple_new = tuple.__new__


def _checked_field(name: str, value: Any) -> int:
    if type(value) is not int:
        if isinstance(value, bool) or isinstance(value, str):
            raise TypeError(f"Position {name} must be an int, got {type(value).__name__} {value!r:.40}")
        try:
            value = operator.index(value)  # numpy integers and the like
        except TypeError:
            raise TypeError(f"Position {name} must be an int, got {type(value).__name__}") from None
    if not 0 <= value < POSITION_LIMIT:
        raise ValueError(f"Position {name} must be >= 0 and < 2**64, got {value}")
    return int(value)


def _position_new(cls: type[Position], segment_id: int, offset: int) -> Position:
    """``Position(segment_id, offset)``, checked (rule 1); the fast path is two type checks."""
    if type(segment_id) is int and type(offset) is int and 0 <= segment_id < POSITION_LIMIT and 0 <= offset:
        if offset < POSITION_LIMIT:
            return _tuple_new(cls, (segment_id, offset))
    return _tuple_new(cls, (_checked_field("segment_id", segment_id), _checked_field("offset", offset)))


_position_new.__qualname__ = "Position.__new__"
# typing.NamedTuple forbids defining __new__ in the class body; set it after (the generated one only packs).
Position.__new__ = _position_new  # type: ignore[method-assign, assignment]

make_position: Callable[[tuple[int, int]], Position] = partial(_tuple_new, Position)
"""``make_position((seg, off))``: a Position without the checks, for positions the log made (rule 2)."""

START = make_position((0, 0))
