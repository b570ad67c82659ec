"""The writer's byte budget (pure): the ZeroMQ queue it picks never holds more than the caps allow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nori_wal import protocol as P
from nori_wal.writer_proc.budget import DEFAULT_MAX_CONNECTION_BYTES, MemoryBudget

MIB = 1024 * 1024


@given(
    message=st.integers(1, 64 * MIB),
    times=st.integers(2, 5000),
    extra=st.integers(0, 64 * MIB),
    pending=st.integers(1, 256 * MIB),
    connections=st.integers(0, 1000),
)
def test_the_queue_it_picks_fits_the_per_connection_cap(message, times, extra, pending, connections):
    b = MemoryBudget(pending, message * times + min(extra, message - 1), message)
    assert b.rcvhwm >= 1
    assert b.connection_bound <= b.max_connection_bytes  # (queue + the one decoded message) x the largest
    assert b.connection_bound + message > b.max_connection_bytes  # ... and the deepest queue that fits
    assert b.worst_case(connections) == pending + message + connections * b.connection_bound


def test_the_defaults_queue_two_of_the_largest_requests_per_connection():
    b = MemoryBudget()
    assert b.max_message_bytes == P.MAX_MESSAGE_BYTES
    assert b.max_connection_bytes == DEFAULT_MAX_CONNECTION_BYTES
    assert b.rcvhwm == 2
    assert b.worst_case(8) < 448 * MIB


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_pending_bytes": 0}, "max_pending_bytes"),
        ({"max_connection_bytes": P.MAX_MESSAGE_BYTES}, "max_connection_bytes"),
        ({"max_message_bytes": 0}, "max_message_bytes"),
    ],
)
def test_a_cap_too_small_is_refused_by_name(kwargs, named):
    with pytest.raises(ValueError, match=named):
        MemoryBudget(**kwargs)
