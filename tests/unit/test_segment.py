"""The segment header's predecessor field and the sequence rule built on it (pure, no files).

Rules under test (``nori_wal.segment``): a segment whose predecessor is gone
while an older segment is still there was lost; GC's deleted prefix and
recovery's skipped ids are not losses; a header that names no predecessor (the
log's first, or one an older version wrote) is not judged.
"""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given
from hypothesis import strategies as st

from nori_wal.segment import HEADER_SIZE, check_header, encode_header, header_predecessor, sequence_problem


def test_the_header_names_its_predecessor():
    head = encode_header(7, node_id=3, predecessor=5)
    assert check_header(head, 7) is None
    assert header_predecessor(head) == 5
    first = encode_header(0)
    assert check_header(first, 0) is None and header_predecessor(first) is None


def test_a_header_written_before_the_field_existed_names_none():
    """Older versions wrote 0 in the reserved field: unchecked, never an error."""
    body = struct.pack("<8sHHIQI", b"NORIWAL\x00", 1, HEADER_SIZE, 0, 9, 0)
    head = body + struct.pack("<I", crc32c(body))
    assert check_header(head, 9) is None and header_predecessor(head) is None


def test_a_predecessor_before_segment_zero_is_a_bad_header():
    body = struct.pack("<8sHHIQI", b"NORIWAL\x00", 1, HEADER_SIZE, 0, 2, 3)
    head = body + struct.pack("<I", crc32c(body))
    assert "follows segment -1" in (check_header(head, 2) or "")


@pytest.mark.parametrize("sid,pred", [(3, 3), (3, 4), (2**33, 0)])
def test_encode_header_refuses_an_impossible_predecessor(sid, pred):
    with pytest.raises(ValueError):
        encode_header(sid, predecessor=pred)


def test_a_lost_middle_segment_is_named():
    problem = sequence_problem(3, 2, [0, 1, 3, 4])
    assert problem is not None and problem.startswith("segment 2 is missing") and "segment 1, older" in problem


def test_gcs_prefix_and_recoverys_skipped_ids_are_not_losses():
    assert sequence_problem(5, 4, [5, 6]) is None  # GC deleted 0..4
    assert sequence_problem(4, 2, [0, 1, 2, 4]) is None  # recovery removed 3; 4 follows 2
    assert sequence_problem(4, None, [0, 4]) is None  # an older version's header: not judged


def test_a_segment_between_a_segment_and_its_predecessor_does_not_belong():
    problem = sequence_problem(4, 2, [0, 2, 3, 4])
    assert problem is not None and problem.startswith("segment 3 does not belong")


@given(st.integers(2, 12), st.data())
def test_exactly_the_holes_that_are_not_a_prefix_are_found(n, data):
    """Segments 0..n-1, each following the one before; remove any set that keeps the last (the active one)."""
    gone = data.draw(st.sets(st.integers(0, n - 2), max_size=n - 1))
    present = [s for s in range(n) if s not in gone]
    found = [s for s in present if sequence_problem(s, s - 1 if s else None, present)]
    prefix = gone == set(range(len(gone)))
    assert (found == []) == prefix
    for s in found:  # a segment is flagged exactly when its own predecessor was lost
        assert s - 1 in gone and any(p < s - 1 for p in present)
