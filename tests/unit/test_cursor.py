"""The pure consumer parts: cursor bytes (cursor.py) and the GC plan (retention.py)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nori_wal.cursor import (
    CursorState,
    Expiry,
    check_name,
    decode_cursor,
    decode_expiry,
    encode_cursor,
    encode_expiry,
    name_of,
    name_problem,
)
from nori_wal.position import Position
from nori_wal.retention import Hold, plan_gc

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
u64 = st.integers(0, 2**64 - 2)
positions = st.builds(Position, u64, u64)


@given(names, positions, st.one_of(st.none(), positions), st.integers(0, 2**63))
def test_a_cursor_round_trips(name, nxt, committed, t):
    """encode then decode gives the same cursor back."""
    state = CursorState(name, nxt, committed, t)
    assert decode_cursor(encode_cursor(state), name) == state


@given(names, positions, positions, st.data())
def test_any_damage_to_a_cursor_file_is_detected_never_trusted(name, a, b, data):
    """A flipped bit, a cut, an extension, another name or the other kind: None, never a position."""
    good = encode_cursor(CursorState(name, a, b, 1))
    i = data.draw(st.integers(0, len(good) - 1))
    flipped = bytearray(good)
    flipped[i] ^= 1 << data.draw(st.integers(0, 7))
    assert decode_cursor(bytes(flipped), name) is None
    assert decode_cursor(good[:i], name) is None
    assert decode_cursor(good + b"\0", name) is None
    assert decode_cursor(good, name + "x") is None
    assert decode_expiry(good, name) is None
    assert decode_cursor(encode_expiry(Expiry(name, a, b, 1)), name) is None


@given(st.binary(max_size=200), names)
def test_garbage_is_never_a_cursor(junk, name):
    assert decode_cursor(junk, name) is None and decode_expiry(junk, name) is None


def test_an_expiry_round_trips():
    e = Expiry("idx", Position(1, 40), Position(5, 32), 7)
    assert decode_expiry(encode_expiry(e), "idx") == e


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", ".hidden", "-x", "a" * 65, "é", "a b", "x\0", 5, None])
def test_names_that_could_leave_the_consumers_directory_are_refused(bad):
    assert name_problem(bad) is not None
    with pytest.raises(ValueError):
        check_name(bad)


@pytest.mark.parametrize("good", ["a", "indexer", "shipper-2", "A.b_c", "9" * 64])
def test_good_names(good):
    assert check_name(good) == good and name_of(good + ".cursor") == good and name_of(good + ".lock") is None


SEGS = [(0, 100), (1, 100), (2, 100), (3, 100), (4, 50)]  # 4 is active


def test_gc_without_cursors_deletes_all_it_was_asked_never_the_active_one():
    assert plan_gc(SEGS, Position(9, 0), []).delete == [0, 1, 2, 3]
    assert plan_gc(SEGS, Position(2, 40), []).delete == [0, 1]


def test_a_cursor_holds_its_next_segment_and_every_later_one_and_is_named():
    plan = plan_gc(SEGS, Position(9, 0), [Hold("idx", Position(2, 70)), Hold("late", Position(3, 32))])
    assert plan.delete == [0, 1] and plan.held_back == [2, 3] and not plan.expire
    assert [h.name for h in plan.held_by] == ["idx", "late"]
    assert "consumer 'idx' at 2:70" in plan.describe(Position(9, 0))


def test_past_max_retained_bytes_the_oldest_held_segments_go_and_their_cursors_expire():
    holds = [Hold("slow", Position(0, 40)), Hold("fast", Position(3, 32))]
    plan = plan_gc(SEGS, Position(9, 0), holds, max_retained_bytes=200)
    assert plan.delete == [0, 1, 2] and plan.held_back == [3]
    assert [(e.name, e.lost_from, e.resumes_at) for e in plan.expire] == [("slow", Position(0, 40), Position(3, 32))]
    assert [h.name for h in plan.held_by] == ["fast"]
    assert plan_gc(SEGS, Position(9, 0), holds, max_retained_bytes=10_000).delete == []


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 200)), max_size=4),
    st.integers(0, 8),
    st.one_of(st.none(), st.integers(0, 500)),
)
def test_gc_plan_properties(cursors, before, cap):
    """Deletes a prefix of what was asked; a cursor's segment goes only if the cap forced it, and then it expires."""
    holds = [Hold(f"c{i}", Position(s, o)) for i, (s, o) in enumerate(cursors)]
    plan = plan_gc(SEGS, Position(before, 0), holds, cap)
    asked = [s for s, _ in SEGS[:-1] if s < before]
    assert plan.delete == asked[: len(plan.delete)] and plan.delete + plan.held_back == asked
    expired = {e.name for e in plan.expire}
    for h in holds:
        needed_deleted = any(s >= h.next.segment_id for s in plan.delete)
        assert (h.name in expired) == needed_deleted
        if needed_deleted:
            assert cap is not None
