"""Position: where a record lives, (segment_id, byte offset in that segment) (pure)."""

from __future__ import annotations

from typing import NamedTuple


class Position(NamedTuple):
    """A record's address: segment number (the NNNNNN in NNNNNN.wal) and byte offset.

    Frozen, hashable and totally ordered (tuple order: segment, then offset).
    """

    segment_id: int
    offset: int

    def __str__(self) -> str:
        return f"{self.segment_id}:{self.offset}"

    @classmethod
    def parse(cls, text: str) -> "Position":
        """Parse ``SEG:OFF`` (as printed by the command line tools)."""
        seg, sep, off = text.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            pos = cls(int(seg), int(off))
        except ValueError:
            raise ValueError(f"bad position {text!r}: expected SEG:OFF, e.g. 3:32") from None
        if pos.segment_id < 0 or pos.offset < 0:
            raise ValueError(f"bad position {text!r}: numbers must not be negative")
        return pos


START = Position(0, 0)
